use super::*;

const KEYS: &str = "\
old AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
new HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=
";
const INSTANCE: &str = "https://acme.zitadel.cloud";

fn sealer() -> Sealer {
    Sealer::from_text(KEYS, INSTANCE).unwrap()
}

#[test]
fn a_value_opens_for_its_owner_and_key_under_the_newest_key() {
    let sealer = sealer();
    let stored = sealer.seal(Owner::User("u1"), "tier", b"gold");
    let text = std::str::from_utf8(&stored).unwrap();
    assert!(text.starts_with("usermeta:sealed:v1:new:"), "{text}");
    assert!(!text.contains("gold"));
    assert_eq!(stored.len(), sealer.sealed_len(4));
    let opened = sealer.open(Owner::User("u1"), "tier", &stored).unwrap();
    assert_eq!(opened.plaintext, b"gold");
    assert!(opened.under_newest_key);
}

#[test]
fn equal_values_seal_differently() {
    let sealer = sealer();
    let a = sealer.seal(Owner::User("u1"), "tier", b"gold");
    let b = sealer.seal(Owner::User("u1"), "tier", b"gold");
    assert_ne!(a, b);
}

#[test]
fn a_value_moved_to_another_user_key_owner_kind_or_instance_does_not_open() {
    let sealer = sealer();
    let stored = sealer.seal(Owner::User("u1"), "tier", b"gold");
    for (owner, key) in [
        (Owner::User("u2"), "tier"),
        (Owner::User("u1"), "tier2"),
        (Owner::Organization("u1"), "tier"),
    ] {
        assert_eq!(
            sealer.open(owner, key, &stored).unwrap_err(),
            Unopenable::DoesNotOpen,
            "{owner:?} {key}"
        );
    }
    let elsewhere = Sealer::from_text(KEYS, "https://other.zitadel.cloud").unwrap();
    assert_eq!(
        elsewhere
            .open(Owner::User("u1"), "tier", &stored)
            .unwrap_err(),
        Unopenable::DoesNotOpen
    );
}

#[test]
fn altered_truncated_relabelled_or_unknown_envelopes_do_not_open() {
    let sealer = sealer();
    let stored = sealer.seal(Owner::User("u1"), "tier", b"gold");
    let open = |bytes: &[u8]| sealer.open(Owner::User("u1"), "tier", bytes).unwrap_err();
    // One character of the payload changed.
    let mut altered = stored.clone();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(open(&altered), Unopenable::DoesNotOpen);
    // Cut short: a few characters, or down to less than a nonce and a tag.
    assert!(matches!(
        open(&stored[..stored.len() - 3]),
        Unopenable::DoesNotOpen | Unopenable::Malformed(Malformed::Damaged)
    ));
    assert_eq!(
        open(&stored[..30]),
        Unopenable::Malformed(Malformed::Damaged)
    );
    // The same payload claimed for the other key.
    let text = String::from_utf8(stored.clone()).unwrap();
    let relabelled = text.replace(":new:", ":old:");
    assert_eq!(open(relabelled.as_bytes()), Unopenable::DoesNotOpen);
    let unknown = text.replace(":new:", ":gone:");
    assert_eq!(
        open(unknown.as_bytes()),
        Unopenable::UnknownKey("gone".into())
    );
    assert_eq!(open(b"gold"), Unopenable::Malformed(Malformed::NotSealed));
}

#[test]
fn values_sealed_under_an_older_key_still_open_and_say_so() {
    let only_old = Sealer::from_text(KEYS.lines().next().unwrap(), INSTANCE).unwrap();
    let stored = only_old.seal(Owner::User("u1"), "tier", b"gold");
    let opened = sealer().open(Owner::User("u1"), "tier", &stored).unwrap();
    assert_eq!(opened.plaintext, b"gold");
    assert!(!opened.under_newest_key);
}

#[test]
fn the_largest_plaintext_fits_the_limit_exactly() {
    let sealer = sealer();
    let max = sealer.max_plaintext(500_000);
    assert!(sealer.sealed_len(max) <= 500_000);
    assert!(sealer.sealed_len(max + 1) > 500_000);
    let stored = sealer.seal(Owner::User("u1"), "k", &vec![b'x'; max]);
    assert_eq!(stored.len(), sealer.sealed_len(max));
}

#[test]
fn debug_names_key_ids_only() {
    let shown = format!("{:?}", sealer());
    assert!(shown.contains("old") && shown.contains("new"), "{shown}");
    assert!(
        !shown.contains("AAECAwQF") && !shown.contains("cipher"),
        "{shown}"
    );
}
