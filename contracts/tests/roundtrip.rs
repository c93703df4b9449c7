use contracts::entropy;
use contracts::trust::sealed;
use contracts::wire::envelope::Request;
use contracts::wire::messages::{Isolation, ScriptFile, ScriptSpec, Secrets, Shell, StartScriptV2};
use contracts::wire::ticket::Ticket;

#[test]
fn start_roundtrips() {
    let entropy = &mut entropy::Seeded::new(1);
    let start = StartScriptV2 {
        ticket: Ticket::generate(entropy).unwrap(),
        spec: ScriptSpec {
            script: "echo hi".into(),
            shell: Shell::Bash,
            args: vec!["a".into()],
            env: [("K".to_string(), "V".to_string())].into(),
            files: vec![ScriptFile { name: "f".into(), content: vec![1, 2, 3] }],
            isolation: Isolation::Full,
            mutex_name: Some("m".into()),
            mutex_timeout: Some(5),
            execution_timeout: None,
            secret_env: Secrets::new([("TOKEN".to_string(), "s3cret".to_string())].into()),
            sealed_secret_env: Vec::new(),
            run_as: Some("deploy".into()),
            limits: contracts::wire::messages::ScriptLimits {
                memory_max: Some(1 << 20),
                cpu_max: Some(500),
                tasks_max: Some(10),
                file_size_max: None,
            },
            purpose: Some("deployment".into()),
            submitter: Some("cli:ada".into()),
            approvals: vec![contracts::wire::approvals::Approval {
                digest: "ab".repeat(32),
                key: "0011223344556677".into(),
                expires_at: 3,
                signature: vec![7; 64],
            }],
        },
        wait_for_output: Some(100),
        first_issued_at: None,
    };
    let (_, bytes) = Request::StartScriptV2(start.clone()).encode("web-01", 1, Some(2), entropy).unwrap();
    let (header, decoded) = Request::decode(&bytes).unwrap();
    assert_eq!(header.target, "web-01");
    assert_eq!(decoded, Request::StartScriptV2(start));
}

#[test]
fn secrets_are_not_in_the_digest_nor_in_debug() {
    let plain = ScriptSpec { script: "echo $TOKEN".into(), ..Default::default() };
    let secret = ScriptSpec { secret_env: Secrets::new([("TOKEN".into(), "s3cret".into())].into()), ..plain.clone() };
    assert_eq!(plain.digest(), secret.digest());
    let shown = format!("{secret:?}");
    assert!(shown.contains("TOKEN") && !shown.contains("s3cret"), "{shown}");
    let clash = ScriptSpec { env: [("TOKEN".into(), "x".into())].into(), ..secret.clone() };
    assert!(clash.validate().unwrap_err().to_string().contains("both a variable and a secret"));
    let empty = ScriptSpec { secret_env: Secrets::new([("TOKEN".into(), String::new())].into()), ..plain.clone() };
    assert!(empty.validate().is_err());
    let entropy = &mut entropy::Seeded::new(2);
    let key = contracts::trust::keys::SecretKey::generate(entropy).unwrap();
    let mut sealed_to = |ticket| sealed::seal(&secret.secret_env, &[*key.public()], ticket, entropy).unwrap();
    let sealed = ScriptSpec { sealed_secret_env: sealed_to("t"), ..plain.clone() };
    assert_eq!(sealed.digest(), ScriptSpec { sealed_secret_env: sealed_to("t"), ..plain.clone() }.digest());
    assert_eq!(sealed.digest(), plain.digest(), "sealed secrets are not in the digest either");
    assert!(sealed.validate().is_ok());
    let both = ScriptSpec { secret_env: secret.secret_env.clone(), ..sealed };
    assert!(both.validate().unwrap_err().to_string().contains("sealed or in clear"));
}
