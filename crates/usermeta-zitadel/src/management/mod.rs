//! ZITADEL's management of any user's metadata, with usermeta's service credential: the seam between what
//! usermeta asks (list, set, remove a user's metadata) and the ZITADEL API that answers it. Handlers and the
//! policy call only [`Zitadel::list_user_metadata`], [`Zitadel::set_user_metadata`] and
//! [`Zitadel::remove_user_metadata`]; which API serves them is a [`ManagementApi`] chosen once, so a second
//! one (ZITADEL v4's v2 user service) is another variant and another module, not a change of its callers.

mod v1;

use prost_types::Timestamp;

pub use v1::ORG_HEADER;

use super::{UpstreamError, Zitadel};
use crate::metadata::{KeyFilter, Page, PageRequest};

/// Where a metadata call goes: a user, in an organisation or in the service user's own.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub user_id: &'a str,
    pub org_id: Option<&'a str>,
}

/// The ZITADEL API that manages users' metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ManagementApi {
    /// `/management/v1/users/{id}/metadata/...` (grpc-gateway REST).
    #[default]
    V1,
}

impl Zitadel {
    /// One page of a user's metadata, ascending.
    pub async fn list_user_metadata(
        &self,
        target: Target<'_>,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        match self.management_api {
            ManagementApi::V1 => self.v1_list_user_metadata(target, filter, page).await,
        }
    }

    /// Adds or overwrites entries; one call, all or nothing. Returns ZITADEL's change date.
    pub async fn set_user_metadata(
        &self,
        target: Target<'_>,
        entries: &[(String, Vec<u8>)],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        match self.management_api {
            ManagementApi::V1 => self.v1_set_user_metadata(target, entries).await,
        }
    }

    /// Removes keys; one call, all or nothing: when any key is missing nothing is removed and the error says
    /// so ([`UpstreamError::is_missing_metadata`]).
    pub async fn remove_user_metadata(
        &self,
        target: Target<'_>,
        keys: &[String],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        match self.management_api {
            ManagementApi::V1 => self.v1_remove_user_metadata(target, keys).await,
        }
    }
}
