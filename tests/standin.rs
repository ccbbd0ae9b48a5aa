//! Tests of the ZITADEL stand-in over real HTTP.
