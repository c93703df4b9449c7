//! `dispatcher serve` through the real binary: the HTTP API, the journal and its history, server-sent
//! events, API tokens, browser sessions, what another site's page could send (bodies a form can
//! send, foreign Host and Origin), the OpenAPI document, crash-safe resume after SIGKILL, replicas
//! taking over, and the CLI commands that read the journal.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::service::{http, journal_prefix, remove_journal};
use tests::*;

async fn post(service: &ServiceProcess, body: Value) -> (u16, Value) {
    let response = http().post(format!("{}/v1/scripts", service.url)).json(&body).send().await.expect("POST");
    (response.status().as_u16(), response.json().await.expect("json body"))
}

async fn get(service: &ServiceProcess, path: &str) -> (u16, Value) {
    let response = http().get(format!("{}{path}", service.url)).send().await.expect("GET");
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

fn output_texts(record: &Value) -> Vec<String> {
    record["output"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_owned()).collect()
}

async fn run_cli(args: &[&str], prefix: &str) -> std::process::Output {
    tests::service::journal_cli(args, prefix).await
}

/// A script that records its run, prints `first`, waits for the gate file, then prints `second`;
/// and the gate.
fn gated_script(markers: &Markers, name: &str, first: &str, second: &str) -> (String, std::path::PathBuf) {
    let gate = markers.dir.join(format!("{name}.gate"));
    let script = format!(
        "{}; echo {first}; while [ ! -e '{}' ]; do sleep 0.05; done; echo {second}",
        markers.record(name),
        gate.display()
    );
    (script, gate)
}

/// Waits until the ticket's first output line is in the journal.
async fn first_line_recorded(service: &ServiceProcess, ticket: &str) {
    eventually("the first line in the journal", Duration::from_secs(20), || async {
        let (_, record) = get(service, &format!("/v1/tickets/{ticket}")).await;
        (record["last_seq"] == 1).then_some(())
    })
    .await;
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_submitted_over_http_is_journaled_with_its_output_and_outcome() {
    let agent = TestAgent::start("svc-api").await;
    let prefix = journal_prefix("svc-api");
    let service = ServiceProcess::start(&prefix, &["--replica-id", "replica-one"]).await;
    let ticket = service.submit(agent.id(), "echo one; echo two >&2; exit 3").await;

    let record = service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!((record["outcome"].as_str(), record["exit_code"].as_i64()), (Some("completed"), Some(3)), "{record}");
    // stdout and stderr are separate pipes: their lines may be journaled in either order.
    let texts = output_texts(&record);
    let mut sorted = texts.clone();
    sorted.sort();
    assert_eq!(sorted, ["one", "two"], "{record}");
    let stream_of =
        |text: &str| record["output"].as_array().unwrap().iter().find(|l| l["text"] == text).unwrap()["stream"].clone();
    assert_eq!((stream_of("one"), stream_of("two")), ("stdout".into(), "stderr".into()));
    assert_eq!((record["target"].as_str(), record["who"].as_str()), (Some(agent.id()), Some("local")));
    assert_eq!(record["policy"], "default");
    let (_, later) = get(&service, &format!("/v1/tickets/{ticket}?after=1")).await;
    assert_eq!(output_texts(&later), texts[1..]);

    // The agent has completed (forgotten) the ticket: the output is the journal's.
    let (_, history) = get(&service, &format!("/v1/tickets?target={}&outcome=completed", agent.id())).await;
    assert_eq!(history["tickets"].as_array().unwrap().len(), 1, "{history}");
    let (_, none) = get(&service, &format!("/v1/tickets?target={}&outcome=failed", agent.id())).await;
    assert!(none["tickets"].as_array().unwrap().is_empty());
    let (status, bad) = get(&service, "/v1/tickets?outcome=won").await;
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("completed, cancelled"), "{bad}");

    let (_, agents) = get(&service, "/v1/agents").await;
    let known = &agents["agents"][0];
    assert_eq!((known["target"].as_str(), known["protocol"].as_str()), (Some(agent.id()), Some("v2")), "{agents}");
    let (status, health) = get(&service, "/healthz").await;
    assert_eq!(
        (status, health["journal"].as_str(), health["replica"].as_str()),
        (200, Some("ok"), Some("replica-one"))
    );

    let (status, unknown) = get(&service, &format!("/v1/tickets/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, 404);
    assert!(unknown["error"].as_str().unwrap().contains("kept for 7d)"), "{unknown}");
    let (status, _) = get(&service, "/v1/tickets/not%20a%20ticket").await;
    assert_eq!(status, 400);

    // The CLI reads the same journal: status exits like submit, history lists the ticket.
    let out = run_cli(&["status", &ticket], &prefix).await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(3), "one\n".to_owned()), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("two"));
    let out = run_cli(&["history", "--json", "--target", agent.id()], &prefix).await;
    let listed: Value = serde_json::from_str(text(&out.stdout).lines().next().expect("one line")).unwrap();
    assert_eq!((listed["ticket"].as_str(), listed["exit_code"].as_i64()), (Some(ticket.as_str()), Some(3)));
    let out = run_cli(&["history", "--since", "1h", "--limit", "1", "--outcome", "completed"], &prefix).await;
    assert!(text(&out.stdout).starts_with("TICKET") && text(&out.stdout).contains(&ticket), "{}", text(&out.stdout));
    let out = run_cli(&["history", "--outcome", "failed"], &prefix).await;
    assert_eq!(text(&out.stdout).lines().count(), 1, "only the header: {}", text(&out.stdout));
    let out = run_cli(&["history", "--since", "1"], &prefix).await;
    assert!(text(&out.stdout).contains(&ticket));
    let out = run_cli(&["history", "--since", &(u64::MAX / 2).to_string()], &prefix).await;
    assert!(!text(&out.stdout).contains(&ticket), "nothing submitted since the far future");

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_repeated_with_its_idempotency_key_runs_the_script_once() {
    let agent = TestAgent::start("svc-idem").await;
    let prefix = journal_prefix("svc-idem");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let markers = Markers::new();
    let body = json!({"target": agent.id(), "script": markers.record("idem")});
    let send = |body: &Value| {
        http().post(format!("{}/v1/scripts", service.url)).header("Idempotency-Key", "deploy-42").json(body).send()
    };
    let first: Value = send(&body).await.unwrap().json().await.unwrap();
    let ticket = first["tickets"][0]["ticket"].as_str().unwrap().to_owned();
    service.finished(&ticket, Duration::from_secs(30)).await;
    let again = send(&body).await.unwrap();
    assert_eq!(again.status().as_u16(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["tickets"][0]["ticket"], ticket.as_str(), "the same ticket comes back");
    let other = send(&json!({"target": agent.id(), "script": "echo something else"})).await.unwrap();
    assert_eq!(other.status().as_u16(), 409);
    // A request without a key is a new one.
    let fresh = service.submit(agent.id(), &markers.record("idem")).await;
    assert_ne!(fresh, ticket);
    service.finished(&fresh, Duration::from_secs(30)).await;
    assert_eq!(markers.count("idem"), 2, "once for the keyed request, once for the fresh one");

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_bring_each_line_live_then_the_result() {
    use futures_util::StreamExt;
    let agent = TestAgent::start("svc-sse").await;
    let prefix = journal_prefix("svc-sse");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let markers = Markers::new();
    // The script waits for the test to see its first line before it prints the second.
    let (script, gate) = gated_script(&markers, "sse", "first", "second");
    let ticket = service.submit(agent.id(), &script).await;
    let response = http().get(format!("{}/v1/tickets/{ticket}/events", service.url)).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("event: result") {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next()).await.expect("events in time");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("stream open").expect("chunk")));
        while let Some(end) = seen.find("\n\n") {
            let frame: String = seen.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                let event: Value = serde_json::from_str(data).unwrap();
                if event["text"] == "first" {
                    std::fs::write(&gate, "").unwrap();
                }
                events.push(event);
            }
            if frame.contains("event: result") {
                seen.push_str("event: result");
            }
        }
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ticket", "log", "log", "result"], "{events:?}");
    assert_eq!((events[1]["text"].as_str(), events[2]["text"].as_str()), (Some("first"), Some("second")));
    assert_eq!(events[3]["exit_code"], 0);

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_the_api_stops_the_script_on_the_agent() {
    let agent = TestAgent::start("svc-cancel").await;
    let prefix = journal_prefix("svc-cancel");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let ticket = service.submit(agent.id(), "echo started; sleep 60").await;
    first_line_recorded(&service, &ticket).await;
    let response = http().post(format!("{}/v1/tickets/{ticket}/cancel", service.url)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let record = service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!(record["outcome"], "cancelled", "{record}");
    let again = http().post(format!("{}/v1/tickets/{ticket}/cancel", service.url)).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 409);
    let body: Value = again.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("already finished"), "{body}");

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_required_and_without_them_only_loopback_is_served() {
    let prefix = journal_prefix("svc-auth");
    // No tokens: a non-loopback address is refused, with the reason.
    let out = dispatcher_command()
        .args(["serve", "--journal-prefix", &prefix])
        .env("CUTTLE_LISTEN", "0.0.0.0:0")
        .env("CUTTLE_JOURNAL_URL", redis_url())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("without --api-tokens"), "{}", text(&out.stderr));

    let markers = Markers::new();
    let tokens = markers.dir.join("tokens");
    std::fs::write(&tokens, "# who: token\nrelease-bot 0123456789abcdef0123456789abcdef\n").unwrap();
    let agent = TestAgent::start("svc-auth").await;
    let service = ServiceProcess::start(&prefix, &["--api-tokens", tokens.to_str().unwrap()]).await;
    assert!(!service.log_text().contains("no --api-tokens"));
    let body = json!({"target": agent.id(), "script": "echo authorised"});
    let url = format!("{}/v1/scripts", service.url);
    let anonymous = http().post(&url).json(&body).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let message: Value = anonymous.json().await.unwrap();
    assert!(message["error"].as_str().unwrap().contains("Authorization: Bearer"), "{message}");
    let wrong = http().post(&url).bearer_auth("0123456789abcdef0123456789abcdeX").json(&body).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let history = http().get(format!("{}/v1/tickets", service.url)).send().await.unwrap();
    assert_eq!(history.status().as_u16(), 401);
    let (status, _) = get(&service, "/healthz").await;
    assert_eq!(status, 200, "probes need no token");

    let accepted = http().post(&url).bearer_auth("0123456789abcdef0123456789abcdef").json(&body).send().await.unwrap();
    assert_eq!(accepted.status().as_u16(), 202);
    let accepted: Value = accepted.json().await.unwrap();
    let ticket = accepted["tickets"][0]["ticket"].as_str().unwrap();
    let record: Value = http()
        .get(format!("{}/v1/tickets/{ticket}", service.url))
        .bearer_auth("0123456789abcdef0123456789abcdef")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["who"], "release-bot", "the journal says who submitted: {record}");

    // The web view: pages need a login; its cookie reads, but never submits.
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = no_redirects.get(format!("{}/tickets/{ticket}", service.url)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 303);
    assert_eq!(page.headers()["location"], format!("/login?next=/tickets/{ticket}"));
    let login_with = |token: &str| {
        let form = format!("token={token}&next=%2F%2Fevil.example%2F");
        let request = no_redirects.post(format!("{}/login", service.url));
        request.header("content-type", "application/x-www-form-urlencoded").body(form).send()
    };
    let refused = login_with("0123456789abcdef0123456789abcdeX").await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    let login = login_with("0123456789abcdef0123456789abcdef").await.unwrap();
    assert_eq!(
        (login.status().as_u16(), &login.headers()["location"]),
        (303, &"/".parse().unwrap()),
        "no open redirect"
    );
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(!set_cookie.contains("Secure"), "no --public-url https://...: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(!cookie.contains("0123456789abcdef0123456789abcdef"), "the cookie is a session, not the token: {cookie}");
    let with_cookie = |request: reqwest::RequestBuilder| request.header("cookie", cookie.clone()).send();
    let page = with_cookie(no_redirects.get(format!("{}/tickets/{ticket}", service.url))).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains(ticket));
    let listed = with_cookie(http().get(format!("{}/v1/tickets", service.url))).await.unwrap();
    assert_eq!(listed.status().as_u16(), 200, "the cookie reads the API");
    let forged = with_cookie(http().post(&url).json(&body)).await.unwrap();
    assert_eq!(forged.status().as_u16(), 401, "a cookie alone cannot submit a script");

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

/// The port of the service's address.
fn port_of(service: &ServiceProcess) -> u16 {
    service.addr().rsplit_once(':').and_then(|(_, port)| port.parse().ok()).expect("HOST:PORT")
}

/// The status of `GET /v1/tickets` with these headers.
async fn read_tickets(service: &ServiceProcess, headers: &[(&str, &str)]) -> u16 {
    service.raw("GET", "/v1/tickets", headers, "").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_another_sites_page_could_send_is_refused_and_nothing_runs() {
    let agent = TestAgent::start("svc-site").await;
    let prefix = journal_prefix("svc-site");
    let markers = Markers::new();
    let args = ["--allowed-host", "cuttle.test", "--allowed-host", "tunnel.test:9000"];
    let service =
        ServiceProcess::start_with_env(&prefix, &args, &[("CUTTLE_PUBLIC_URL", "http://public.test:8080")]).await;
    let port = port_of(&service);
    let started = eventually("the names it answers to in the log", Duration::from_secs(10), || async {
        let log = service.log_text();
        log.contains("answers to").then_some(log)
    })
    .await;
    assert!(started.contains("cuttle.test, tunnel.test:9000, http://public.test:8080"), "{started}");
    assert!(started.contains("warning: no --api-tokens, yet --allowed-host or --public-url"), "{started}");
    let body = json!({"target": agent.id(), "script": markers.record("ran")}).to_string();
    let json_type = ("Content-Type", "application/json");

    // What a form can send (and a no-cors fetch, and a fetch of a typeless Blob): 415.
    let forms = [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ];
    for content_type in forms {
        let (status, answer) = service.raw("POST", "/v1/scripts", &[("Content-Type", content_type)], &body).await;
        assert_eq!(status, 415, "{content_type}: {answer}");
        assert!(answer.contains("Content-Type: application/json") && answer.contains("nothing was run"), "{answer}");
    }
    let (status, answer) = service.raw("POST", "/v1/scripts", &[], &body).await;
    assert_eq!(status, 415, "a JSON body without a type: {answer}");
    let upload = format!("/v1/files?target={}&path=upload.txt", agent.id());
    let (status, answer) = service.raw("PUT", &upload, &[("Content-Type", "text/plain")], "bytes").await;
    assert_eq!(status, 415, "{answer}");
    assert!(answer.contains("application/octet-stream"), "{answer}");

    // DNS rebinding: a page's own name, resolved to the service's address. Probes answer anyway.
    let rebound = [
        format!("rebound.evil.example:{port}"),
        "rebound.evil.example".to_owned(),
        "localhost:1".to_owned(),
        format!("10.0.0.1:{port}"),
        "tunnel.test:9001".to_owned(),
        "public.test".to_owned(),
    ];
    for host in &rebound {
        let (status, answer) = service.raw("GET", "/v1/tickets", &[("Host", host)], "").await;
        assert_eq!(status, 421, "{host}: {answer}");
        assert!(answer.contains("--allowed-host") && answer.contains("nothing was read"), "{answer}");
        let (status, _) = service.raw("POST", "/v1/scripts", &[("Host", host), json_type], &body).await;
        assert_eq!(status, 421, "{host}");
        let (status, _) = service.raw("GET", "/", &[("Host", host)], "").await;
        assert_eq!(status, 421, "the web view too: {host}");
    }
    let (status, _) = service.raw("GET", "/healthz", &[("Host", "probe.internal")], "").await;
    assert_eq!(status, 200, "probes answer to any name");

    // Pages of other origins: 403, for reads too; and what the browser says is cross-site.
    for origin in
        ["http://evil.example", "null", "http://127.0.0.1:1", "http://public.test", "https://tunnel.test:9001"]
    {
        let (status, answer) = service.raw("POST", "/v1/scripts", &[("Origin", origin), json_type], &body).await;
        assert_eq!(status, 403, "{origin}: {answer}");
        assert!(answer.contains("--public-url"), "{answer}");
        assert_eq!(read_tickets(&service, &[("Origin", origin)]).await, 403, "{origin}");
    }
    let cross_site = [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "no-cors"), json_type];
    let (status, _) = service.raw("POST", "/v1/scripts", &cross_site, &body).await;
    assert_eq!(status, 403, "a fetch the browser says is cross-site");
    let cancel = format!("/v1/tickets/{}/cancel", uuid::Uuid::new_v4());
    let (status, _) = service.raw("POST", &cancel, &[("Origin", "http://evil.example")], "").await;
    assert_eq!(status, 403);
    let (status, _) = service.raw("POST", &cancel, &[("Content-Type", "text/plain")], "").await;
    assert_eq!(status, 415, "an empty form posted to cancel");

    // Nothing was recorded, nothing ran; each refusal is logged with the page it came from.
    let (_, history) = get(&service, &format!("/v1/tickets?target={}", agent.id())).await;
    assert_eq!(history["tickets"], json!([]), "{history}");
    let log = service.log_text();
    assert!(log.contains("refused a request") && log.contains("origin=http://evil.example"), "{log}");

    // Its own names and origins pass: the web view through a link from elsewhere, the names and
    // ports it was given, and the script from a page of its own, which runs.
    let link = [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate")];
    assert_eq!(service.raw("GET", "/", &link, "").await.0, 200, "a link to the web view from elsewhere");
    let own = [
        (format!("localhost:{port}"), format!("http://localhost:{port}")),
        (format!("[::1]:{port}"), format!("http://[::1]:{port}")),
        ("cuttle.test".to_owned(), "https://cuttle.test".to_owned()),
        ("cuttle.test:8443".to_owned(), "https://cuttle.test:8443".to_owned()),
        ("tunnel.test:9000".to_owned(), "http://tunnel.test:9000".to_owned()),
        ("public.test:8080".to_owned(), "http://public.test:8080".to_owned()),
    ];
    for (host, origin) in &own {
        let headers = [("Host", host.as_str()), ("Origin", origin.as_str()), ("Sec-Fetch-Site", "same-origin")];
        assert_eq!(read_tickets(&service, &headers).await, 200, "{host} {origin}");
    }
    let origin = format!("http://{}", service.addr());
    let from_own_page = [
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
        ("Content-Type", "application/json; charset=utf-8"),
    ];
    let (status, answer) = service.raw("POST", "/v1/scripts", &from_own_page, &body).await;
    assert_eq!(status, 202, "{answer}");
    let accepted: Value = serde_json::from_str(&answer).unwrap();
    service.finished(accepted["tickets"][0]["ticket"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(markers.count("ran"), 1, "only the request of its own page ran");

    // A name that is not NAME[:PORT], or a URL with a path, is refused at start.
    for bad in [
        ["--allowed-host", "*"],
        ["--allowed-host", "evil.example/x"],
        ["--public-url", "https://cuttle.example.com/app"],
    ] {
        let out = dispatcher_command().arg("serve").args(bad).output().await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(bad[1]), "{}", text(&out.stderr));
    }

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_is_a_session_not_the_token_secure_behind_https_and_logout_ends_it() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let hex_token: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    let prefix = journal_prefix("svc-session");
    let markers = Markers::new();
    let tokens = markers.dir.join("tokens");
    std::fs::write(&tokens, format!("operator {TOKEN}\n")).unwrap();
    let args = ["--api-tokens", tokens.to_str().unwrap(), "--public-url", "https://cuttle.example.test:8443"];
    let env = [("CUTTLE_ALLOWED_HOSTS", "ops.example.test,10.9.8.7:8443")];
    let service = ServiceProcess::start_with_env(&prefix, &args, &env).await;

    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = || {
        let request = no_redirects.post(format!("{}/login", service.url));
        request.header("content-type", "application/x-www-form-urlencoded").body(format!("token={TOKEN}")).send()
    };
    let first = login().await.unwrap();
    assert_eq!(first.status().as_u16(), 303);
    let set_cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let session = cookie.strip_prefix("cuttle_session=").expect("the session cookie");
    assert_eq!(session.len(), 64, "{cookie}");
    assert!(!session.contains(TOKEN) && session != hex_token, "the cookie holds no token: {cookie}");
    let second = login().await.unwrap();
    let other = second.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    assert_ne!(other, cookie, "each login is a session of its own");

    // The journal keeps digests: neither the session nor the token is in Redis.
    let mut con = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}session:*")).query_async(&mut con).await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        let value: String = redis::cmd("GET").arg(key).query_async(&mut con).await.unwrap();
        for secret in [session, TOKEN, hex_token.as_str()] {
            assert!(!key.contains(secret) && !value.contains(secret), "{key} = {value}");
        }
    }

    // The session reads, through its own names: the public URL's, the allowed ones, the address.
    let reads =
        ["cuttle.example.test:8443", "ops.example.test", "ops.example.test:1234", "10.9.8.7:8443", service.addr()];
    for host in reads {
        assert_eq!(read_tickets(&service, &[("Cookie", &cookie), ("Host", host)]).await, 200, "{host}");
    }
    for host in ["cuttle.example.test", "cuttle.example.test:443", "10.9.8.7", "evil.example:8443"] {
        assert_eq!(read_tickets(&service, &[("Cookie", &cookie), ("Host", host)]).await, 421, "{host}");
    }
    let public_origin = [("Cookie", cookie.as_str()), ("Origin", "https://cuttle.example.test:8443")];
    assert_eq!(read_tickets(&service, &public_origin).await, 200);
    let plain_origin = [("Cookie", cookie.as_str()), ("Origin", "http://cuttle.example.test:8443")];
    assert_eq!(read_tickets(&service, &plain_origin).await, 403, "the public URL's scheme only");
    // Neither the token in the old cookie, nor the token's hex as a session id, is a session.
    for forged in [format!("cuttle_token={hex_token}"), format!("cuttle_session={hex_token}")] {
        assert_eq!(read_tickets(&service, &[("Cookie", &forged)]).await, 401, "{forged}");
    }

    // Logging out ends that session for the API and the pages; the other stays open.
    let logout = no_redirects.post(format!("{}/logout", service.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(logout.status().as_u16(), 303);
    let forget = logout.headers()["set-cookie"].to_str().unwrap();
    assert!(forget.contains("Max-Age=0") && forget.contains("Secure"), "{forget}");
    let (status, answer) = service.raw("GET", "/v1/tickets", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("log in again"), "{answer}");
    let page = no_redirects.get(format!("{}/", service.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 303, "back to the login form");
    assert_eq!(read_tickets(&service, &[("Cookie", &other)]).await, 200, "the other session is still open");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}session:*")).query_async(&mut con).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");

    service.stop().await;
    remove_journal(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let prefix = journal_prefix("svc-openapi");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let (status, doc) = get(&service, "/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in paths {
        for method in
            item.as_object().unwrap().keys().filter(|m| ["get", "post", "put", "delete"].contains(&m.as_str()))
        {
            documented.push(format!("{} {path}", method.to_uppercase()));
            // Every documented route is served: whatever it answers, it is not "no such route".
            let path =
                path.replace("{ticket}", &uuid::Uuid::new_v4().to_string()).replace("{name}", "no-such-schedule");
            let url = format!("{}{path}", service.url);
            let request = match method.as_str() {
                "get" => http().get(&url),
                "put" => http().put(&url).body(""),
                "delete" => http().delete(&url),
                _ => http().post(&url).json(&json!({})),
            };
            let response = request.timeout(Duration::from_secs(5)).send().await.expect("route answers");
            assert_ne!(response.status().as_u16(), 405, "{method} {path}");
            if response.status().as_u16() == 404 {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                assert!(!body["error"].as_str().unwrap_or_default().contains("no such route"), "{method} {path}");
            }
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "DELETE /v1/schedules/{name}",
            "GET /healthz",
            "GET /metrics",
            "GET /openapi.json",
            "GET /v1/agents",
            "GET /v1/files",
            "GET /v1/schedules",
            "GET /v1/tickets",
            "GET /v1/tickets/{ticket}",
            "GET /v1/tickets/{ticket}/events",
            "POST /v1/schedules",
            "POST /v1/schedules/{name}/pause",
            "POST /v1/schedules/{name}/resume",
            "POST /v1/schedules/{name}/run",
            "POST /v1/scripts",
            "POST /v1/tickets/{ticket}/cancel",
            "PUT /v1/files",
        ]
    );
    // And what is not documented is not served.
    let (status, body) = get(&service, "/v1/jobs").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/openapi.json"));

    service.stop().await;
    remove_journal(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_mid_run_resumes_its_tickets_and_runs_nothing_twice() {
    let agent = TestAgent::start("svc-crash").await;
    let prefix = journal_prefix("svc-crash");
    // Restarted under its name, the service takes its own leases back at once: without that it
    // would wait the whole lease for them to expire.
    let mut service = ServiceProcess::start(&prefix, &["--replica-id", "crashy", "--lease-ttl", "60s"]).await;
    let markers = Markers::new();
    let (script, gate) = gated_script(&markers, "crash", "before", "after");
    let ticket = service.submit(agent.id(), &format!("{script}; exit 7")).await;
    first_line_recorded(&service, &ticket).await;
    service.kill().await;
    // The script goes on without its follower, and ends while nobody watches.
    std::fs::write(&gate, "").unwrap();
    service.restart().await;
    let record = service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!((record["outcome"].as_str(), record["exit_code"].as_i64()), (Some("completed"), Some(7)), "{record}");
    assert_eq!(output_texts(&record), ["before", "after"], "every line once, in order");
    assert_eq!(markers.count("crash"), 1, "the script ran once");
    assert!(service.log_text().contains("resuming ticket from the journal"));

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_the_tickets_of_one_that_was_killed() {
    let agent = TestAgent::start("svc-replica").await;
    let prefix = journal_prefix("svc-replica");
    let mut first = ServiceProcess::start(&prefix, &["--lease-ttl", "2s", "--replica-id", "first"]).await;
    let second = ServiceProcess::start(&prefix, &["--lease-ttl", "2s", "--replica-id", "second"]).await;
    let markers = Markers::new();
    let (script, gate) = gated_script(&markers, "replica", "started", "done");
    let ticket = first.submit(agent.id(), &script).await;
    first_line_recorded(&second, &ticket).await;
    let (_, health) = get(&first, "/healthz").await;
    assert_eq!(health["following"], 1, "the replica that took the submission follows it");
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let lease: i64 = redis::cmd("PTTL").arg(format!("{prefix}lease:{ticket}")).query_async(&mut redis).await.unwrap();
    assert!((1..=2000).contains(&lease), "--lease-ttl 2s sets the lease: {lease} ms left");
    first.kill().await;
    let killed = Instant::now();
    eventually("the other replica to take the ticket over", Duration::from_secs(10), || async {
        let (_, health) = get(&second, "/healthz").await;
        (health["following"] == 1).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "took over after {took:?}");
    std::fs::write(&gate, "").unwrap();
    let record = second.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!(record["outcome"], "completed", "{record}");
    assert_eq!(output_texts(&record), ["started", "done"]);
    assert_eq!(markers.count("replica"), 1);

    first.stop().await;
    second.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_detach_prints_the_ticket_and_a_service_runs_it() {
    let agent = TestAgent::start("svc-detach").await;
    let prefix = journal_prefix("svc-detach");
    // Recorded with nobody serving: it waits in the journal.
    let out = run_cli(&["submit", "--detach", "--target", agent.id(), "--", "echo detached; exit 4"], &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ticket = text(&out.stdout).trim().to_owned();
    contracts::wire::ticket::Ticket::parse(&ticket).expect("a ticket on stdout");
    let out = run_cli(&["status", &ticket], &prefix).await;
    assert!(text(&out.stderr).contains("is queued"), "{}", text(&out.stderr));

    let service = ServiceProcess::start(&prefix, &[]).await;
    let out = run_cli(&["status", &ticket, "--follow", "--json"], &prefix).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let events: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["text"] == "detached"), "{events:?}");
    assert_eq!(events.last().unwrap()["event"], "result");

    let out_no_journal = dispatcher_command()
        .args(["submit", "--detach", "--target", agent.id(), "--", "true"])
        .env_remove("CUTTLE_JOURNAL_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(out_no_journal.status.code(), Some(2));
    assert!(text(&out_no_journal.stderr).contains("--journal"), "{}", text(&out_no_journal.stderr));

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tickets_leave_the_journal_after_the_history_retention() {
    let agent = TestAgent::start("svc-retention").await;
    let prefix = journal_prefix("svc-retention");
    let markers = Markers::new();
    let policies = markers.dir.join("policies.toml");
    std::fs::write(&policies, "[policies.patient]\ndeployment = \"1m\"\n").unwrap();
    let service =
        ServiceProcess::start(&prefix, &["--history-retention", "2s", "--config", policies.to_str().unwrap()]).await;
    let (status, body) =
        post(&service, json!({"target": agent.id(), "script": "echo kept", "policy": "patient"})).await;
    assert_eq!(status, 202, "{body}");
    let ticket = body["tickets"][0]["ticket"].as_str().unwrap().to_owned();
    let record = service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!(record["policy"], "patient", "the policies file is the service's");
    let (status, body) = post(&service, json!({"target": agent.id(), "script": "true", "policy": "hasty"})).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("hasty"), "{body}");
    eventually("the ticket to expire", Duration::from_secs(15), || async {
        let (status, _) = get(&service, &format!("/v1/tickets/{ticket}")).await;
        (status == 404).then_some(())
    })
    .await;
    let (_, history) = get(&service, "/v1/tickets").await;
    assert!(history["tickets"].as_array().unwrap().is_empty(), "{history}");

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

/// Records `count` finished tickets on three targets, one in five failed, one in seven unknown
/// (the rest completed), and one still running; gives each finished ticket with its target and
/// outcome.
async fn journal_of_outcomes(
    journal: &dispatcher::service::journal::Journal,
    count: usize,
) -> Vec<(String, String, contracts::submission::outcome::OutcomeKind)> {
    use contracts::submission::outcome::{Outcome, OutcomeKind};
    use contracts::submission::retry::{Policies, RetryPolicy};
    use dispatcher::route::Route;
    use dispatcher::service::submission::Submission;
    let mut finished = Vec::new();
    for index in 0..=count {
        let ticket = edge::entropy::ticket();
        let target = format!("web-{}", index % 3);
        let policies = Policies::from(RetryPolicy::new(Duration::from_secs(60)));
        let route = Route::agent(&target).unwrap();
        let submission = Submission::new(ticket.clone(), &route, sh("true"), "default", policies, "test");
        journal.submit(&submission).await.unwrap();
        if index == count {
            break; // still running: in no outcome's index
        }
        let outcome = match index {
            i if i % 5 == 0 => OutcomeKind::Failed,
            i if i % 7 == 0 => OutcomeKind::Unknown,
            _ => OutcomeKind::Completed,
        };
        let end = Outcome {
            ticket: Some(ticket.clone()),
            target: target.clone(),
            outcome,
            exit_code: Some(0),
            error: None,
            process_exit: 0,
        };
        assert!(journal.finish(&end).await.unwrap());
        finished.push((ticket.to_string(), target, outcome));
    }
    finished
}

/// Every filter by outcome, alone and with each target, gives exactly the tickets that match.
async fn assert_outcome_filters(
    journal: &dispatcher::service::journal::Journal,
    finished: &[(String, String, contracts::submission::outcome::OutcomeKind)],
) {
    use contracts::submission::outcome::OutcomeKind;
    use dispatcher::service::journal::HistoryQuery;
    for outcome in [OutcomeKind::Completed, OutcomeKind::Failed, OutcomeKind::Unknown, OutcomeKind::Cancelled] {
        for target in [None, Some("web-0"), Some("web-2")] {
            let query =
                HistoryQuery { target: target.map(str::to_owned), outcome: Some(outcome), since_ms: None, limit: 100 };
            let mut found: Vec<String> =
                journal.history(&query).await.unwrap().iter().map(|r| r.submission.ticket.to_string()).collect();
            let mut expected: Vec<String> = finished
                .iter()
                .filter(|(_, t, o)| *o == outcome && target.is_none_or(|target| t == target))
                .map(|(ticket, _, _)| ticket.clone())
                .collect();
            found.sort();
            expected.sort();
            assert_eq!(found, expected, "{outcome:?} on {target:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_by_outcome_reads_an_index_kept_as_tickets_finish_and_built_once_for_an_older_journal() {
    use dispatcher::service::journal::{HistoryQuery, Journal};
    let prefix = journal_prefix("outcome-index");
    let journal = Journal::open(&redis_url(), &prefix, Duration::from_secs(3600)).unwrap();
    let finished = journal_of_outcomes(&journal, 40).await;
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let marked: bool =
        redis::cmd("EXISTS").arg(format!("{prefix}outcome-index")).query_async(&mut redis).await.unwrap();
    assert!(marked, "a journal indexed from its first ticket needs no pass over its history");
    assert_outcome_filters(&journal, &finished).await;

    // The filter reads the index, not the history: with the index emptied it finds nothing.
    let indexes: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}outcome:*")).query_async(&mut redis).await.unwrap();
    assert_eq!(indexes.len(), 3 + 3 * 3, "completed, failed and unknown, each of all targets and of each: {indexes:?}");
    let _: () = redis::cmd("DEL").arg(&indexes).query_async(&mut redis).await.unwrap();
    let failed = HistoryQuery {
        outcome: Some(contracts::submission::outcome::OutcomeKind::Failed),
        limit: 100,
        ..Default::default()
    };
    assert!(journal.history(&failed).await.unwrap().is_empty());

    // A journal written before the index (no marker): the first filter by outcome builds it.
    let _: () = redis::cmd("DEL").arg(format!("{prefix}outcome-index")).query_async(&mut redis).await.unwrap();
    assert_outcome_filters(&journal, &finished).await;
    remove_journal(&prefix).await;
}

/// A script through the service is answered as fast as it runs: the service sets TCP_NODELAY,
/// else Nagle's algorithm holds a small write made soon after another until the client
/// acknowledges the first, up to 40 ms later (its delayed acknowledgement), and a client that
/// submits and follows one script after another on one connection waited that long for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_through_the_service_is_not_held_back_by_the_network() {
    use futures_util::StreamExt;
    let agent = TestAgent::start("svc-nodelay").await;
    let prefix = journal_prefix("svc-nodelay");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let client = http();
    let mut took = Vec::new();
    for _ in 0..8 {
        let began = Instant::now();
        let body = serde_json::json!({"target": agent.id(), "script": "echo hello"});
        let response = client.post(format!("{}/v1/scripts", service.url)).json(&body).send().await.unwrap();
        let answer: Value = response.json().await.unwrap();
        let ticket = answer["tickets"][0]["ticket"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned();
        let response = client.get(format!("{}/v1/tickets/{ticket}/events", service.url)).send().await.unwrap();
        let mut events = response.bytes_stream();
        let mut seen = String::new();
        while !seen.contains("event: result") {
            let chunk = tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("events in time");
            seen.push_str(&String::from_utf8_lossy(&chunk.expect("stream open").expect("chunk")));
        }
        took.push(began.elapsed());
    }
    let fastest = took.iter().min().copied().unwrap();
    println!("NODELAY submitted and followed to its result: {took:?}");
    assert!(fastest < Duration::from_millis(35), "every script took 35 ms or more: {took:?}");
    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

/// The journal's requests share one connection: none waits for a `PING`, which a pooled
/// connection costs each time it is taken (11 a script through the service, before). Only a
/// stream of events takes a connection of its own (its `XREAD BLOCK` holds it), so one a script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_does_not_ping_redis_for_each_request() {
    use std::collections::HashSet;
    let agent = TestAgent::start("svc-pings").await;
    let prefix = journal_prefix("svc-pings");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let ticket = service.submit(agent.id(), "echo warm").await;
    service.finished(&ticket, Duration::from_secs(30)).await;
    let (mut monitor, mut lines) = redis_monitor().await;
    let collect = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
        seen
    });
    let scripts = 10;
    for _ in 0..scripts {
        let ticket = service.submit(agent.id(), "echo hello").await;
        let response = http().get(format!("{}/v1/tickets/{ticket}/events", service.url)).send().await.unwrap();
        let events = tokio::time::timeout(Duration::from_secs(30), response.text()).await.expect("in time").unwrap();
        assert!(events.contains("event: result"), "{events}");
    }
    let _ = monitor.start_kill();
    let seen = collect.await.unwrap();
    // `<time> [<db> <address>] "COMMAND" ...`: the service's connections are those that name its
    // journal's keys.
    let address = |line: &str| line.split(['[', ']']).nth(1).map(str::to_owned);
    let service_addresses: HashSet<String> =
        seen.iter().filter(|l| l.contains(&prefix) && !l.contains(" lua] ")).filter_map(|l| address(l)).collect();
    let pings = seen
        .iter()
        .filter(|l| l.contains("\"PING\"") && address(l).is_some_and(|a| service_addresses.contains(&a)))
        .count();
    println!("JOURNAL-PINGS {pings} for {scripts} scripts");
    assert!(pings <= scripts + 2, "{pings} PINGs for {scripts} scripts");
    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}
