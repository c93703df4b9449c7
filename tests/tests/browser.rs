//! The web view of `dispatcher serve` in a real headless browser (chromium through chromedriver):
//! logging in with an API token, a ticket's lines appearing live and in order while its script
//! runs, a retry appearing when the agent's link to the broker is cut, hostile output shown as
//! text, and the layout at a phone's width and a desktop's: every table fits its container and what
//! matters is within the viewport (screenshots in target/screenshots/). And a page of another
//! site that makes the browser post a script to the service (a form, `fetch`es) and read its
//! tickets: refused, nothing runs.
//! Skipped, with the reason on stderr, where chromium or chromedriver is not installed.

use fantoccini::Locator;
use serde_json::{json, Value};
use std::time::Duration;
use tests::agent::test_config;
use tests::browser::{Browser, OtherSite};
use tests::proxy::{broker_addr, FaultProxy};
use tests::service::{http, journal_prefix, remove_journal};
use tests::*;

const TOKEN: &str = "browser-test-token-0123456789abcdef";

/// The lines of the ticket page's output, as the browser shows them.
async fn shown_lines(browser: &Browser) -> Vec<String> {
    let lines =
        browser.eval("return Array.from(document.querySelectorAll('#output .line')).map(l => l.textContent)").await;
    serde_json::from_value(lines).unwrap_or_default()
}

/// Waits until the page shows at least `count` lines, and gives them; fails with what it shows.
async fn until_lines(browser: &Browser, count: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let lines = shown_lines(browser).await;
        if lines.len() >= count {
            return lines;
        }
        if tokio::time::Instant::now() > deadline {
            let page = browser.eval("return document.querySelector('main').innerText").await;
            panic!("no {count} lines on the page within 40s; it shows:\n{}", page.as_str().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the page is wider than the viewport (a horizontal scroll bar on the page itself).
async fn overflows(browser: &Browser) -> bool {
    browser.eval("return document.documentElement.scrollWidth > window.innerWidth").await == Value::Bool(true)
}

/// What does not fit the viewport's width, beyond the page itself: a table wider than its
/// container, a scroll wrapper or output that scrolls sideways, a shown element of `main` that
/// reaches past the viewport's edges, and each essential (a CSS selector, every match) that is not
/// shown at all or not wholly within the viewport. Empty when everything fits.
async fn layout_problems(browser: &Browser, essentials: &[&str]) -> Vec<String> {
    let script = r#"
        const [essentials] = arguments;
        const problems = [];
        const width = window.innerWidth;
        const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className.split(' ').join('.') : '');
        const outside = r => r.left < -0.5 || r.right > width + 0.5;
        for (const table of document.querySelectorAll('main table')) {
            const box = table.parentElement;
            if (table.scrollWidth > box.clientWidth) problems.push(`${name(table)} is ${table.scrollWidth} px wide in ${name(box)} of ${box.clientWidth} px`);
        }
        for (const box of document.querySelectorAll('main .scroll, main pre, main table')) {
            if (box.scrollWidth > box.clientWidth) problems.push(`${name(box)} scrolls: ${box.scrollWidth} px in ${box.clientWidth} px`);
        }
        const beyond = Array.from(document.querySelectorAll('main *')).filter(e => {
            const r = e.getBoundingClientRect();
            return r.width > 0 && r.height > 0 && outside(r);
        });
        // The innermost only: a row beyond the edge because one of its cells is, is that cell.
        for (const e of beyond.filter(e => !beyond.some(inner => inner !== e && e.contains(inner)))) {
            const r = e.getBoundingClientRect();
            problems.push(`${name(e)} '${e.textContent.trim().slice(0, 30)}' spans ${Math.round(r.left)}..${Math.round(r.right)} px of ${width}`);
        }
        for (const selector of essentials) {
            const found = document.querySelectorAll(selector);
            if (found.length === 0) problems.push(`nothing matches ${selector}`);
            for (const e of found) {
                const r = e.getBoundingClientRect();
                if (r.width === 0 || r.height === 0 || getComputedStyle(e).visibility !== 'visible') problems.push(`${selector} '${e.textContent.trim()}' is hidden`);
                else if (outside(r)) problems.push(`${selector} '${e.textContent.trim()}' spans ${Math.round(r.left)}..${Math.round(r.right)} px of ${width}`);
            }
        }
        return problems;
    "#;
    let problems = browser.client.execute(script, vec![json!(essentials)]).await.expect("script runs in the page");
    serde_json::from_value(problems).expect("a list of problems")
}

/// What a phone must show of the index: each ticket's id, target, state and outcome; each agent's
/// id, whether it is reachable and its protocol; every policy's name, deadlines and retries.
const INDEX_ESSENTIALS: &[&str] = &[
    "#tickets tbody td:nth-child(-n+4)",
    "table.agents tbody td:nth-child(-n+3)",
    "table.policies tbody td",
    "table.mappings tbody td",
];

/// What a phone must show of a ticket page.
const TICKET_ESSENTIALS: &[&str] = &["h1 code", "dl.facts dd", "#retries li", "#output .line", "#result"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticket_page_follows_a_script_live_with_its_retries_at_phone_and_desktop_widths() {
    tests::skip_unless!(tests::needs::browser());
    let link = FaultProxy::start(broker_addr()).await;
    // A long agent id, as real ones are: it must wrap on a phone rather than widen the tables.
    let mut config = test_config("browser-phone-layout");
    config.amqp_url = link.amqp_url();
    let agent = TestAgent::start_with(config).await;
    let markers = Markers::new();
    let tokens = markers.dir.join("tokens");
    std::fs::write(&tokens, format!("browser {TOKEN}\n")).unwrap();
    let prefix = journal_prefix("browser");
    // A second policy and the agent mapped to the default one, so the index shows two policies,
    // a mapping and the file's (long) path.
    let policies = markers.dir.join("policies.toml");
    let mapping = format!("[policies.edge]\ndeployment = \"10m\"\n[targets]\n\"{}\" = \"default\"\n", agent.id());
    std::fs::write(&policies, mapping).unwrap();
    let args = ["--api-tokens", tokens.to_str().unwrap(), "--config", policies.to_str().unwrap()];
    let service = ServiceProcess::start(&prefix, &args).await;

    // Five lines, a pause until the gate opens, five more, and a line that is hostile HTML.
    let gate = markers.dir.join("gate");
    let script = format!(
        "for i in 1 2 3 4 5; do echo line-$i; sleep 0.2; done; while [ ! -e '{}' ]; do sleep 0.05; done; \
         for i in 6 7 8 9 10; do echo line-$i; sleep 0.1; done; echo '<img src=x onerror=document.title=1>' >&2",
        gate.display()
    );
    let response = http()
        .post(format!("{}/v1/scripts", service.url))
        .bearer_auth(TOKEN)
        .json(&json!({"target": agent.id(), "script": script}))
        .send()
        .await
        .unwrap();
    let accepted: Value = response.json().await.unwrap();
    let ticket = accepted["tickets"][0]["ticket"].as_str().expect("a ticket").to_owned();

    let browser = Browser::start().await;
    browser.viewport(1280, 900).await;
    // Not logged in: the ticket page sends the browser to the login form, and back after it.
    browser.client.goto(&format!("{}/tickets/{ticket}", service.url)).await.unwrap();
    let url = browser.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/login", "{url}");
    let form = browser.client.form(Locator::Css("form.login")).await.unwrap();
    form.set_by_name("token", TOKEN).await.unwrap();
    form.submit().await.unwrap();
    eventually("the ticket page after login", Duration::from_secs(10), || async {
        let url = browser.client.current_url().await.ok()?;
        (url.path() == format!("/tickets/{ticket}")).then_some(())
    })
    .await;

    // Lines appear while the script runs, in order.
    let first = until_lines(&browser, 5).await;
    assert_eq!(first, (1..=5).map(|i| format!("line-{i}")).collect::<Vec<_>>());
    let result = browser.client.find(Locator::Id("result")).await.unwrap().text().await.unwrap();
    assert!(result.starts_with("Running"), "{result}");

    // The agent's link to the broker is cut (and refused) while the service waits on it: the
    // request goes unanswered, and a retry appears with its error.
    link.outage();
    let retry = eventually("a retry on the page", Duration::from_secs(40), || async {
        let item = browser.client.find(Locator::Css("#retries li.retry")).await.ok()?;
        item.text().await.ok()
    })
    .await;
    assert!(retry.contains("attempt 1 failed: no reply from") && retry.contains("left"), "{retry}");
    link.restore();
    std::fs::write(&gate, "").unwrap();
    let all = until_lines(&browser, 11).await;
    assert_eq!(all[..10], (1..=10).map(|i| format!("line-{i}")).collect::<Vec<_>>());
    assert_eq!(all[10], "<img src=x onerror=document.title=1>", "hostile output is shown as text");
    let images = browser.eval("return document.querySelectorAll('#output img').length").await;
    assert_eq!(images, json!(0));
    eventually("the outcome on the page", Duration::from_secs(20), || async {
        let text = browser.client.find(Locator::Id("result")).await.ok()?.text().await.ok()?;
        text.contains("completed").then_some(())
    })
    .await;
    let state = browser.client.find(Locator::Id("state")).await.unwrap().text().await.unwrap();
    assert_eq!(state, "finished");

    // Desktop: every column; phone: nothing scrolls sideways, secondary columns hidden, and what
    // matters within the viewport.
    assert!(!overflows(&browser).await, "the ticket page fits a desktop");
    assert_eq!(layout_problems(&browser, TICKET_ESSENTIALS).await, Vec::<String>::new(), "ticket page on a desktop");
    let desktop_ticket = browser.screenshot("ticket-desktop").await;
    browser.viewport(390, 844).await;
    assert!(!overflows(&browser).await, "the ticket page fits a phone");
    assert_eq!(layout_problems(&browser, TICKET_ESSENTIALS).await, Vec::<String>::new(), "ticket page on a phone");
    let phone_ticket = browser.screenshot("ticket-phone").await;
    browser.client.goto(&format!("{}/?target={}", service.url, agent.id())).await.unwrap();
    let row = browser.client.find(Locator::Css(&format!("#tickets a[href='/tickets/{ticket}']"))).await.unwrap();
    assert_eq!(row.text().await.unwrap(), ticket);
    // The rows the script renders (it refreshes the list every two seconds) fit as the server's do.
    browser.eval("document.querySelector('#tickets tbody tr').dataset.served = 'yes'; return null").await;
    let refreshed = "return document.querySelectorAll('#tickets tbody tr').length > 0 && !document.querySelector('#tickets tbody tr[data-served]')";
    eventually("the list refreshed by the script", Duration::from_secs(10), || async {
        (browser.eval(refreshed).await == Value::Bool(true)).then_some(())
    })
    .await;
    assert_eq!(layout_problems(&browser, INDEX_ESSENTIALS).await, Vec::<String>::new(), "index on a phone");
    assert!(!overflows(&browser).await, "the index fits a phone");
    let hidden = "return Array.from(document.querySelectorAll('main th.wide')).map(th => getComputedStyle(th).display)";
    assert_eq!(browser.eval(hidden).await, json!(vec!["none"; 6]), "secondary columns hidden on a phone");
    // Each policy's deadlines read with their purpose, one to a line.
    let purposes = "return Array.from(document.querySelectorAll('table.policies tbody tr:first-child td'))
        .map(td => [getComputedStyle(td, '::before').content, td.textContent])";
    let expected = json!([
        ["none", "default"],
        ["\"Deployment\"", "2m30s"],
        ["\"Runbook\"", "2m30s"],
        ["\"Health check\"", "2m30s"],
        ["\"Retries\"", "on"]
    ]);
    assert_eq!(browser.eval(purposes).await, expected, "the default policy on a phone");
    let phone_index = browser.screenshot("index-phone").await;
    browser.eval("document.getElementById('policies').scrollIntoView(); return null").await;
    let phone_policies = browser.screenshot("index-phone-policies").await;
    browser.eval("window.scrollTo(0, 0); return null").await;
    browser.viewport(1280, 900).await;
    assert!(!browser.eval(hidden).await.to_string().contains("none"), "every column on a desktop");
    assert_eq!(layout_problems(&browser, INDEX_ESSENTIALS).await, Vec::<String>::new(), "index on a desktop");
    let agents = browser.client.find(Locator::Css("table.agents tbody")).await.unwrap().text().await.unwrap();
    assert!(agents.contains(agent.id()) && agents.contains("v2"), "{agents}");
    let policies = browser.client.find(Locator::Css("table.policies tbody")).await.unwrap().text().await.unwrap();
    assert!(policies.contains("default") && policies.contains("2m30s") && policies.contains("10m"), "{policies}");
    let desktop_index = browser.screenshot("index-desktop").await;
    let shots = [desktop_ticket, phone_ticket, phone_index, phone_policies, desktop_index];
    eprintln!("screenshots: {}", shots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "));

    browser.close().await;
    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

/// `text` for an HTML attribute in double quotes.
fn attribute(text: &str) -> String {
    text.replace('&', "&amp;").replace('"', "&quot;").replace('\'', "&#39;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A page of another site that, once loaded, tries what a web page can to run a script through
/// the service at `service` on `agent`, each attempt recording a marker of its own if it runs:
/// `fetch`es of the script as text and as a typeless `Blob` (no-cors: no preflight, the answer
/// unread), one as JSON (cors: preflighted), a read of `/v1/tickets`; then a form of type
/// `text/plain` whose single field spells the JSON body (`name=value`, the `=` in a shell comment),
/// posted into a frame. The outcome of the fetches goes to `data-done` on the body.
fn attack_page(service: &str, agent: &str, markers: &Markers) -> String {
    let body = |marker: &str| json!({"target": agent, "script": markers.record(marker)}).to_string();
    let bodies = json!({"text": body("fetch-text"), "blob": body("fetch-blob"), "cors": body("fetch-cors")});
    let form_script = serde_json::to_string(&format!("{} #", markers.record("form"))).unwrap();
    let mut field = format!("{{\"target\":{},\"script\":{form_script}", serde_json::to_string(agent).unwrap());
    field.pop(); // the script's closing quote: the field's value, `"}`, closes the string and the object
    let scripts = serde_json::to_string(&format!("{service}/v1/scripts")).unwrap();
    let tickets = serde_json::to_string(&format!("{service}/v1/tickets")).unwrap();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Cat pictures</title></head>
<body>
<iframe name="sink"></iframe>
<form id="attack" method="post" enctype="text/plain" target="sink" action="{action}">
<input type="hidden" name="{name}" value="&quot;}}">
</form>
<script>
const bodies = {bodies};
async function attempt(name, request) {{
  try {{ const response = await request(); return name + ": " + response.type + " " + response.status; }}
  catch (e) {{ return name + ": blocked"; }}
}}
window.addEventListener("load", async function () {{
  const results = [
    await attempt("no-cors text", () => fetch({scripts}, {{method: "POST", mode: "no-cors", body: bodies.text}})),
    await attempt("no-cors blob", () => fetch({scripts}, {{method: "POST", mode: "no-cors", body: new Blob([bodies.blob])}})),
    await attempt("cors json", () => fetch({scripts}, {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: bodies.cors}})),
  ];
  try {{ results.push("read: " + await (await fetch({tickets})).text()); }} catch (e) {{ results.push("read: blocked"); }}
  document.getElementById("attack").submit();
  document.body.dataset.done = JSON.stringify(results);
}});
</script>
</body></html>"#,
        action = attribute(&format!("{service}/v1/scripts")),
        name = attribute(&field),
    )
}

/// The lines of the service's log that say it refused a request from `origin` to `path`.
fn refusals<'a>(log: &'a str, origin: &str, path: &str) -> Vec<&'a str> {
    let (origin, path) = (format!("origin={origin}"), format!("path={path}"));
    log.lines()
        .filter(|line| line.contains("refused a request"))
        .filter(|line| line.split_whitespace().any(|t| t == origin) && line.split_whitespace().any(|t| t == path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_site_cannot_make_the_browser_run_a_script_or_read_the_tickets() {
    tests::skip_unless!(tests::needs::browser());
    let agent = TestAgent::start("browser-attack").await;
    let markers = Markers::new();
    let prefix = journal_prefix("browser-attack");
    // No --api-tokens: the default, open to anyone on this machine, and so to its browsers' pages.
    let service = ServiceProcess::start(&prefix, &[]).await;
    let site = OtherSite::serve(attack_page(&service.url, agent.id(), &markers)).await;

    let browser = Browser::start().await;
    browser.client.goto(&format!("{}/", site.origin())).await.unwrap();
    let done = eventually("the page's attempts", Duration::from_secs(30), || async {
        browser.eval("return document.body.dataset.done || null").await.as_str().map(str::to_owned)
    })
    .await;
    let results: Vec<String> = serde_json::from_str(&done).unwrap();
    // The preflighted request and the read never got an answer the page may see.
    assert!(results.contains(&"cors json: blocked".to_owned()), "{results:?}");
    assert!(results.contains(&"read: blocked".to_owned()), "{results:?}");

    // Each attempt reached the service and was refused there: the form (a navigation), both
    // no-cors fetches, the preflight of the JSON one, and the read.
    let origin = site.origin();
    let refused = eventually("the service to refuse the form and the fetches", Duration::from_secs(20), || async {
        let log = service.log_text();
        let posts = refusals(&log, &origin, "/v1/scripts");
        let form = posts.iter().any(|line| line.split_whitespace().any(|t| t == "mode=navigate"));
        let fetches = posts.iter().filter(|line| line.split_whitespace().any(|t| t == "mode=no-cors")).count();
        let read = !refusals(&log, &origin, "/v1/tickets").is_empty();
        (form && fetches >= 2 && read).then_some(posts.len())
    })
    .await;
    assert!(refused >= 4, "the form, two fetches and a preflight: {}", service.log_text());

    // Nothing was recorded, and nothing ran; the same agent runs what the API is asked for.
    let history = format!("{}/v1/tickets?target={}", service.url, agent.id());
    let listed: Value = http().get(&history).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["tickets"], json!([]), "no ticket from the page: {listed}");
    let ticket = service.submit(agent.id(), &markers.record("api")).await;
    service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!(markers.count("api"), 1);
    for attempt in ["form", "fetch-text", "fetch-blob", "fetch-cors"] {
        assert_eq!(markers.count(attempt), 0, "the page's {attempt} ran a script");
    }
    let listed: Value = http().get(&history).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["tickets"].as_array().map(Vec::len), Some(1), "{listed}");

    browser.close().await;
    drop(site);
    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}
