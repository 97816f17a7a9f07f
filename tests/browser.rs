//! The web page in headless Chromium (Debian's `chromium`; `.ci/run` installs it), driven
//! over the DevTools protocol: search by a sentence, thumbnails loaded, a result opened,
//! "more like this", a dropped photo; screenshots at desktop and phone width under
//! `target/tmp/screenshots/`. The server has a token: the page is opened once as
//! `/?token=`, which leaves the address bar, and every request after it goes by the
//! session cookie. Its Content-Security-Policy holds: no violation is reported. Skipped,
//! saying so, where no Chromium is installed, except under `CI`, where that fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixtures, many_photos, qseek, stderr, tiny};
use serde_json::{json, Value};

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET over HTTP/1.1, reading exactly Content-Length bytes (DevTools keeps the
/// connection open).
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

/// One page's DevTools connection.
struct DevTools {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// The text of every log entry and console message the page reported.
    log: Vec<String>,
}

impl DevTools {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(tungstenite::Message::text(msg)).unwrap();
        loop {
            let msg = self.ws.read().unwrap();
            let Ok(text) = msg.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            match v["method"].as_str() {
                Some("Log.entryAdded") => self.log.push(v["params"]["entry"]["text"].to_string()),
                Some("Runtime.consoleAPICalled") => self.log.push(v["params"]["args"].to_string()),
                _ => {}
            }
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        );
        assert!(r["exceptionDetails"].is_null(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until the expression is true.
    fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.eval(expression) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {}",
                self.eval("document.getElementById('status').textContent")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the viewport once the page's images are decoded and painted.
    fn screenshot(&mut self, path: &Path) {
        self.eval(
            "Promise.all([...document.images].filter(i => i.complete).map(i => i.decode().catch(() => {}))) \
             .then(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))))",
        );
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64_decode(r["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk.iter().filter(|&&c| c != b'=').count();
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= (if c == b'=' { 0 } else { value(c) as u32 }) << (18 - 6 * i);
        }
        out.extend(&acc.to_be_bytes()[1..n]);
    }
    out
}

const GRID_LOADED: &str = "(() => { const imgs = [...document.querySelectorAll('#grid img')]; \
    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); })()";

/// The thumbnails on screen have loaded (those below load lazily, when scrolled to).
const VISIBLE_LOADED: &str = "(() => { const imgs = [...document.querySelectorAll('#grid img')] \
    .filter(i => i.getBoundingClientRect().top < innerHeight); \
    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); })()";

/// The server's token: characters a URL must escape, to prove the page's round trip.
const TOKEN: &str = "t0k+en/=x";

#[test]
fn the_page_searches_shows_photos_and_works_at_phone_width() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium on PATH under CI: .ci/run installs it (apt-get install chromium)"
        );
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium; .ci/run does)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (photos, index) = (fixtures().join("photos"), tmp.path().join("index"));
    let index_s = index.display().to_string();
    let tiny = tiny();
    let out = qseek(&[
        "index",
        &photos.display().to_string(),
        "--index",
        &index_s,
        "-m",
        &tiny,
        "-q",
        "--store-vision-features",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A folder the page may index.
    let more = tmp.path().join("more");
    let more_total = many_photos(&more, 2);
    let more_s = more.display().to_string();
    let mut server = Guard(
        Command::new(env!("CARGO_BIN_EXE_qseek"))
            .args(["serve", "--index", &index_s, "--addr", "127.0.0.1:0", "-q"])
            .args(["--allow", &more_s, "--batch", "2"])
            .env("QSEEK_TOKEN", TOKEN)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(server.0.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(rest) = line.strip_prefix("qseek: serving ") {
            break format!("{rest}?token={}", TOKEN.replace('+', "%2B"));
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let profile = tmp.path().join("chromium");
    let _browser = Guard(
        Command::new(&chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
                &format!("--user-data-dir={}", profile.display()),
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let port_file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
            .filter(|p| !p.is_empty())
        {
            break port;
        }
        assert!(Instant::now() < deadline, "chromium did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    let targets: Value =
        serde_json::from_str(&http_get(&format!("127.0.0.1:{port}"), "/json/list")).unwrap();
    let page = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .unwrap();
    let (ws, _) = tungstenite::connect(page["webSocketDebuggerUrl"].as_str().unwrap()).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    let mut dt = DevTools {
        ws,
        next_id: 0,
        log: Vec::new(),
    };
    // Load the page again with the browser's log on and a listener for policy
    // violations in place before any of its own script runs.
    dt.call("Log.enable", json!({}));
    dt.call("Runtime.enable", json!({}));
    dt.call("Page.enable", json!({}));
    dt.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
            e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"}),
    );
    dt.call("Page.reload", json!({}));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    dt.wait_for(
        "the page",
        "document.readyState === 'complete' && !!document.getElementById('q') \
         && Array.isArray(window.cspViolations)",
    );
    // The token went into an HttpOnly cookie: out of the address bar and of the script.
    assert_eq!(dt.eval("location.search + location.hash"), json!(""));
    assert_eq!(dt.eval("document.cookie"), json!(""));
    // Type a query and search.
    dt.eval("document.getElementById('q').focus()");
    dt.call("Input.insertText", json!({"text": "a cup of coffee"}));
    dt.eval("document.querySelector('#search-form button').click()");
    dt.wait_for("the grid's thumbnails", GRID_LOADED);
    let cards = dt.eval("document.querySelectorAll('#grid .card').length");
    assert_eq!(cards, json!(7), "every photo is a result");
    dt.screenshot(&shots.join("desktop.png"));

    // Open one result: the full photo and its numbers.
    let opened = dt.eval("(() => { const c = document.querySelector('#grid .card'); c.click(); return c.dataset.id; })()");
    dt.wait_for(
        "the full photo",
        "document.getElementById('detail').open && document.getElementById('detail-img').complete \
         && document.getElementById('detail-img').naturalWidth > 0",
    );
    let meta = dt.eval("document.getElementById('detail-meta').textContent");
    for label in ["Path", "Copies", "ITC", "ITM logit", "Match"] {
        assert!(meta.as_str().unwrap().contains(label), "{meta}");
    }
    dt.screenshot(&shots.join("desktop-detail.png"));

    // More like this: the photo's neighbours, itself left out.
    dt.eval("document.getElementById('like-this').click()");
    dt.wait_for(
        "more like this",
        &format!(
            "!document.getElementById('detail').open && document.querySelectorAll('#grid .card').length === 6 \
             && ![...document.querySelectorAll('#grid .card')].some(c => c.dataset.id === {opened})"
        ),
    );
    dt.wait_for("its thumbnails", GRID_LOADED);

    // Drop a photo on the page.
    dt.eval(
        "(async () => { const blob = await (await fetch('/api/images/' + document.querySelector('#grid .card').dataset.id)).blob(); \
         const dt = new DataTransfer(); dt.items.add(new File([blob], 'dropped.png', {type: blob.type})); \
         document.getElementById('grid').replaceChildren(); \
         document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); })()",
    );
    dt.wait_for("the dropped photo's results", GRID_LOADED);

    // Index a folder from the page: the progress bar moves while it runs, then the new
    // photos are found.
    dt.eval(&format!(
        "document.getElementById('folder').value = {more_s:?}; \
         document.querySelector('#index-form button[type=submit]').click()"
    ));
    dt.wait_for(
        "the running progress bar",
        "!document.getElementById('progress').hidden && !document.getElementById('cancel').hidden \
         && document.getElementById('progress-text').textContent.startsWith('running:')",
    );
    // Once a poll has seen progress (or the end, on a fast machine), for the screenshot.
    dt.wait_for(
        "progress",
        "document.getElementById('progress-bar').value > 0 \
         || document.getElementById('progress-text').textContent.startsWith('done:')",
    );
    dt.screenshot(&shots.join("desktop-indexing.png"));
    dt.wait_for(
        "the finished progress bar",
        &format!(
            "document.getElementById('progress-text').textContent.startsWith('done: {more_total}/{more_total}') \
             && document.getElementById('progress-bar').value === {more_total} \
             && document.getElementById('cancel').hidden"
        ),
    );
    dt.eval(
        "document.getElementById('grid').replaceChildren(); \
         document.getElementById('q').value = 'a cup of coffee'; \
         document.querySelector('#search-form button').click()",
    );
    dt.wait_for(
        "the grid with the new photos",
        &format!(
            "document.querySelectorAll('#grid .card').length === {}",
            7 + more_total
        ),
    );
    dt.wait_for("their thumbnails", GRID_LOADED);

    // Phone width: the same search, nothing wider than the screen.
    dt.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    );
    dt.eval(
        "document.getElementById('grid').replaceChildren(); \
         document.getElementById('q').value = 'a cup of coffee'; \
         document.querySelector('#search-form button').click()",
    );
    dt.wait_for("the grid at phone width", VISIBLE_LOADED);
    assert_eq!(
        dt.eval("document.documentElement.scrollWidth <= 390"),
        json!(true)
    );
    dt.screenshot(&shots.join("phone.png"));
    eprintln!("screenshots in {}", shots.display());
    assert_eq!(dt.eval("window.cspViolations"), json!([]));
    let refused: Vec<&String> = dt
        .log
        .iter()
        .filter(|l| l.contains("Content Security Policy") || l.contains("Refused to"))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}
