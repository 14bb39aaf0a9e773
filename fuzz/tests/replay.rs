//! Replays every seed and every saved regression through its target's checks, without a
//! fuzzing engine: `cargo test --manifest-path fuzz/Cargo.toml`.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let data = std::fs::read(&path).expect("input file");
            eprintln!("{}", path.display());
            check(&data);
            count += 1;
        }
    }
    assert!(count > 0, "no inputs for {target}");
}

#[test]
fn money() {
    replay("money", withholding_fuzz::money::check);
}

#[test]
fn proto_to_domain() {
    replay("proto_to_domain", withholding_fuzz::proto::check);
}

#[test]
fn bearer_token() {
    replay("bearer_token", withholding_fuzz::token::check);
}

/// The seeds meant to pass do pass, so the fuzzer starts from inputs that reach the checks of
/// accepted values.
#[test]
fn valid_seeds_are_accepted() {
    use prost::Message;
    use withholding::grpc::convert;
    use withholding::pb;

    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let read = |target: &str, name: &str| std::fs::read(seeds.join(target).join(name)).unwrap();
    let roles = ["merchant", "payer", "auditor", "operator"];
    for (key, roles) in [
        ("hs256", &roles[..]),
        ("rs256", &roles[..1]),
        ("es256", &roles[..1]),
        ("eddsa", &roles[..1]),
    ] {
        for &role in roles {
            let seed = read("bearer_token", &format!("token-{key}-{role}"));
            let token = std::str::from_utf8(&seed[1..]).unwrap();
            let actor = withholding_fuzz::token::authenticator().authenticate(token);
            assert_eq!(actor.expect(token).role.as_str(), role);
        }
    }
    for name in ["electricity", "loan", "day", "week", "year"] {
        let seed = read("proto_to_domain", &format!("create-{name}"));
        let request = pb::CreateMandateRequest::decode(&seed[1..]).unwrap();
        let draft = convert::terms(request.terms).expect(name);
        draft.complete(jiff::Timestamp::UNIX_EPOCH).expect(name);
    }
    let seed = read("proto_to_domain", "confirm");
    let request = pb::ConfirmMandateRequest::decode(&seed[1..]).unwrap();
    convert::consent(request.consent).unwrap();
    convert::funding_sources(request.funding_sources).unwrap();
}
