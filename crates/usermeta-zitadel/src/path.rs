//! URL paths built from request data. Each segment is percent-encoded on its own (every byte but the
//! unreserved `A-Z a-z 0-9 - . _ ~`), so `/`, `?`, `#` or `%` in an id or key cannot add a segment, end the
//! path or start an escape, and ZITADEL decodes the segment back to the bytes usermeta checked. The segments
//! `.` and `..` have no encoding that URL parsers leave alone (`%2e` counts as a dot too), so they are refused.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

/// Bytes kept as they are in a path segment: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `base` (ending in `/`) with `segments` appended, each encoded; `Err` names a segment that is empty, `.`
/// or `..` (validation refuses those first, so this is the last line of defence).
pub(crate) fn under<'a>(
    base: &Url,
    segments: impl IntoIterator<Item = &'a str>,
) -> Result<Url, String> {
    let mut path = base.path().to_owned();
    for (i, segment) in segments.into_iter().enumerate() {
        if matches!(segment, "" | "." | "..") {
            return Err(segment.to_owned());
        }
        if i > 0 || !path.ends_with('/') {
            path.push('/');
        }
        path.extend(utf8_percent_encode(segment, SEGMENT));
    }
    let mut url = base.clone();
    url.set_path(&path);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> Url {
        "http://zitadel.example/prefix/".parse().unwrap()
    }

    #[test]
    fn delimiters_stay_inside_their_segment() {
        let url = under(&base(), ["users", "a/b?c#d%2F", "metadata", "x y"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://zitadel.example/prefix/users/a%2Fb%3Fc%23d%252F/metadata/x%20y"
        );
        assert_eq!(url.query(), None);
        assert_eq!(url.fragment(), None);
    }

    #[test]
    fn dot_segments_and_empty_ones_are_refused() {
        for bad in ["", ".", ".."] {
            assert_eq!(under(&base(), ["users", bad]), Err(bad.to_owned()));
        }
        // Dots inside a name are ordinary characters.
        assert!(under(&base(), ["users", "...", "a.b"]).is_ok());
    }

    proptest! {
        #[test]
        fn every_segment_decodes_back_to_its_bytes(segments in prop::collection::vec("\\PC{1,12}|[./%?#\\\\ \t\n]{1,6}", 1..5)) {
            let wanted: Vec<&str> = segments.iter().map(String::as_str).collect();
            match under(&base(), wanted.iter().copied()) {
                Err(refused) => prop_assert!(matches!(refused.as_str(), "" | "." | "..")),
                Ok(url) => {
                    let path = url.path().strip_prefix("/prefix/").unwrap();
                    let decoded: Vec<String> = path
                        .split('/')
                        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8().unwrap().into_owned())
                        .collect();
                    prop_assert_eq!(decoded, segments.clone());
                    prop_assert_eq!(url.query(), None);
                }
            }
        }
    }
}
