//! Signatures against the Standard Webhooks specification's published examples (the reference
//! libraries' test vectors), in both directions, and every way a header can be wrong.

use onephase_webhook::signature::{PublicKey, Secret, Signer, SigningKey, Verifier, VerifyError};

const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TIMESTAMP: i64 = 1_614_265_330;
const BODY: &[u8] = br#"{"test": 2432232314}"#;
const V1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const V1_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
const V1A_KEY: &str = "VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
const V1A_SIGNATURE: &str =
    "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";

fn verify(verifier: &Verifier, signature: &str, now: i64) -> Result<i64, VerifyError> {
    verifier.verify_at(ID, &TIMESTAMP.to_string(), signature, BODY, now)
}

#[test]
fn v1_matches_the_published_example_both_ways() -> anyhow::Result<()> {
    let secret = Secret::parse(V1_SECRET)?;
    assert_eq!(
        Signer::new(vec![secret.clone().into()]).sign(ID, TIMESTAMP, BODY),
        V1_SIGNATURE
    );
    let verifier = Verifier::new(vec![secret.into()]);
    assert_eq!(verify(&verifier, V1_SIGNATURE, TIMESTAMP)?, TIMESTAMP);
    // The prefix is optional.
    let bare = Secret::parse(V1_SECRET.trim_start_matches("whsec_"))?;
    assert_eq!(
        verify(&Verifier::new(vec![bare.into()]), V1_SIGNATURE, TIMESTAMP)?,
        TIMESTAMP
    );
    Ok(())
}

#[test]
fn v1a_matches_the_published_example_both_ways() -> anyhow::Result<()> {
    let key = SigningKey::parse(V1A_KEY)?;
    assert_eq!(
        Signer::new(vec![key.clone().into()]).sign(ID, TIMESTAMP, BODY),
        V1A_SIGNATURE
    );
    let public = PublicKey::parse(&key.public_key().to_string())?;
    let verifier = Verifier::new(vec![public.into()]);
    assert_eq!(verify(&verifier, V1A_SIGNATURE, TIMESTAMP)?, TIMESTAMP);
    assert!(SigningKey::parse(&format!("whsk_{V1A_KEY}")).is_ok());
    Ok(())
}

#[test]
fn rotation_signs_with_both_keys_and_either_verifies() -> anyhow::Result<()> {
    let old = Secret::parse(V1_SECRET)?;
    let new = Secret::generate(&mut onephase_core::rand::rng());
    let ed = SigningKey::generate(&mut onephase_core::rand::rng());
    let header = Signer::new(vec![
        old.clone().into(),
        new.clone().into(),
        ed.clone().into(),
    ])
    .sign(ID, TIMESTAMP, BODY);
    assert_eq!(header.split(' ').count(), 3, "{header}");
    for verifier in [
        Verifier::new(vec![old.into()]),
        Verifier::new(vec![new.into()]),
        Verifier::new(vec![ed.public_key().into()]),
    ] {
        verify(&verifier, &header, TIMESTAMP)?;
    }
    // Entries of unknown versions are skipped, as the specification asks.
    let verifier = Verifier::new(vec![Secret::parse(V1_SECRET)?.into()]);
    verify(
        &verifier,
        &format!("v2,abc v9,xyz {V1_SIGNATURE}"),
        TIMESTAMP,
    )?;
    Ok(())
}

#[test]
fn every_bad_header_is_refused_with_its_reason() -> anyhow::Result<()> {
    let verifier = Verifier::new(vec![Secret::parse(V1_SECRET)?.into()]);
    let tolerance = 5 * 60;
    // A wrong signature, a changed body, another secret.
    assert_eq!(
        verify(
            &verifier,
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            TIMESTAMP
        ),
        Err(VerifyError::NoValidSignature)
    );
    assert_eq!(
        verifier.verify_at(
            ID,
            &TIMESTAMP.to_string(),
            V1_SIGNATURE,
            b"{\"test\": 1}",
            TIMESTAMP
        ),
        Err(VerifyError::NoValidSignature)
    );
    let other = Verifier::new(vec![
        Secret::generate(&mut onephase_core::rand::rng()).into(),
    ]);
    assert_eq!(
        verify(&other, V1_SIGNATURE, TIMESTAMP),
        Err(VerifyError::NoValidSignature)
    );
    // Bad base64, a truncated entry, an empty header.
    assert!(matches!(
        verify(&verifier, "v1,not*base64!", TIMESTAMP),
        Err(VerifyError::MalformedSignature(_))
    ));
    assert!(matches!(
        verify(&verifier, "v1,", TIMESTAMP),
        Err(VerifyError::MalformedSignature(_))
    ));
    assert_eq!(
        verify(&verifier, "", TIMESTAMP),
        Err(VerifyError::NoValidSignature)
    );
    // Timestamps: stale, from the future, not a number.
    assert!(matches!(
        verify(&verifier, V1_SIGNATURE, TIMESTAMP + tolerance + 1),
        Err(VerifyError::StaleTimestamp {
            direction: "behind",
            ..
        })
    ));
    assert!(matches!(
        verify(&verifier, V1_SIGNATURE, TIMESTAMP - tolerance - 1),
        Err(VerifyError::StaleTimestamp {
            direction: "ahead of",
            ..
        })
    ));
    verify(&verifier, V1_SIGNATURE, TIMESTAMP + tolerance)?;
    assert!(matches!(
        verifier.verify_at(ID, "yesterday", V1_SIGNATURE, BODY, TIMESTAMP),
        Err(VerifyError::InvalidTimestamp(_))
    ));
    // The id is part of what is signed, and must be printable.
    assert_eq!(
        verifier.verify_at(
            "msg_other",
            &TIMESTAMP.to_string(),
            V1_SIGNATURE,
            BODY,
            TIMESTAMP
        ),
        Err(VerifyError::NoValidSignature)
    );
    assert_eq!(
        verifier.verify_at("", &TIMESTAMP.to_string(), V1_SIGNATURE, BODY, TIMESTAMP),
        Err(VerifyError::InvalidId)
    );
    // Keys are checked when read.
    assert!(Secret::parse("whsec_short").is_err());
    assert!(Secret::parse("whsec_###").is_err());
    assert!(SigningKey::parse("whsk_AAAA").is_err());
    Ok(())
}
