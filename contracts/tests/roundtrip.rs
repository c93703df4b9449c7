use contracts::*;

#[test]
fn start_roundtrips() {
    let start = StartScriptV2 {
        ticket: Ticket::generate(),
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
        },
        wait_for_output: Some(100),
        first_issued_at: None,
    };
    let (_, bytes) = Request::StartScriptV2(start.clone()).encode("web-01", 1, Some(2)).unwrap();
    let (header, decoded) = Request::decode(&bytes).unwrap();
    assert_eq!(header.target, "web-01");
    assert_eq!(decoded, Request::StartScriptV2(start));
}
