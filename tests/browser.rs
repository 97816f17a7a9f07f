//! The web page in headless Chromium (Debian's `chromium`; `.ci/run` installs it), driven
//! over the DevTools protocol: search by a sentence, thumbnails loaded, a result opened,
//! "more like this", a dropped photo; the filters (a camera, a date range, the order),
//! a "without" term, the chips that remove a term or filter, Back and Forward, a slow
//! answer overtaken by a newer search, a photo's date, camera, size and place in its
//! detail view, "like this, and…", "texts for this photo", a search loaded from its
//! address, the Duplicates view (groups side by side, best copy first); screenshots at desktop and phone width under `target/tmp/screenshots/`. The
//! server has a token: the page is opened once as `/?token=`, which leaves the address
//! bar, and every request after it goes by the session cookie. Its
//! Content-Security-Policy holds: no violation is reported. Skipped, saying so, where no
//! Chromium is installed, except under `CI`, where that fails.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::exif::{jpeg_with_exif, Exif};
use common::{copy_photos, fixtures, many_photos, qseek, stderr, tiny};
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

    /// Waits until no search is on its way and the last one's answer is shown.
    fn settle(&mut self, what: &str) {
        self.wait_for(what, SETTLED);
    }

    /// The file names of the photos shown, in order.
    fn shown(&mut self) -> Vec<String> {
        serde_json::from_value(self.eval(
            "[...document.querySelectorAll('#grid .card img')].map(i => i.alt.split('/').pop())",
        ))
        .unwrap()
    }

    /// [`DevTools::shown`], sorted.
    fn shown_sorted(&mut self) -> Vec<String> {
        let mut v = self.shown();
        v.sort();
        v
    }

    /// An element's text.
    fn text(&mut self, id: &str) -> String {
        let v = self.eval(&format!("document.getElementById({id:?}).textContent"));
        v.as_str().unwrap().to_string()
    }

    /// An input's value.
    fn value(&mut self, id: &str) -> String {
        let v = self.eval(&format!("document.getElementById({id:?}).value"));
        v.as_str().unwrap().to_string()
    }

    /// Sets inputs as a person would, the last one's `change` fired (the filters apply
    /// when they change).
    fn change(&mut self, inputs: &[(&str, &str)]) {
        let mut js = String::new();
        for (id, value) in inputs {
            js += &format!("document.getElementById({id:?}).value = {value:?}; ");
        }
        let (last, _) = inputs.last().unwrap();
        js += &format!(
            "document.getElementById({last:?}).dispatchEvent(new Event('change', {{bubbles: true}}))"
        );
        self.eval(&js);
    }

    /// The chips' names, in order.
    fn chips(&mut self) -> Vec<String> {
        serde_json::from_value(
            self.eval("[...document.querySelectorAll('#chips .chip')].map(c => c.dataset.chip)"),
        )
        .unwrap()
    }

    /// Removes the chip of that name.
    fn remove_chip(&mut self, name: &str) {
        let found = self.eval(&format!(
            "(() => {{ const c = [...document.querySelectorAll('#chips .chip')].find(c => c.dataset.chip === {name:?}); \
             if (!c) return false; c.querySelector('.remove').click(); return true; }})()"
        ));
        assert_eq!(found, json!(true), "no chip {name:?}: {:?}", self.chips());
    }

    /// The page's address after its path.
    fn search(&mut self) -> String {
        self.eval("location.search").as_str().unwrap().to_string()
    }

    /// Opens the detail view of the photo of that file name.
    fn open(&mut self, name: &str) -> u64 {
        let id = self.eval(&format!(
            "(() => {{ const c = [...document.querySelectorAll('#grid .card')] \
             .find(c => c.querySelector('img').alt.split('/').pop() === {name:?}); c.click(); return Number(c.dataset.id); }})()"
        ));
        self.wait_for(
            "the full photo",
            "document.getElementById('detail').open && document.getElementById('detail-img').complete \
             && document.getElementById('detail-img').naturalWidth > 0",
        );
        id.as_u64().unwrap()
    }

    /// Whether the page is wider than the screen.
    fn overflows(&mut self) -> bool {
        self.eval("document.documentElement.scrollWidth > innerWidth || document.body.scrollWidth > innerWidth")
            == json!(true)
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

/// No search on its way; the last one's answer shown (the page marks its grid busy while
/// a request runs).
const SETTLED: &str = "document.getElementById('grid').getAttribute('aria-busy') === 'false'";

/// The photos with EXIF metadata indexed with the fixtures: (file, fixture it copies,
/// metadata).
fn photos_with_exif() -> [(&'static str, &'static str, Exif); 3] {
    [
        (
            "paris.jpg",
            "rocket.jpg",
            Exif {
                date: Some("2023:06:14 10:00:00"),
                offset: Some("+02:00"),
                make: Some("Canon"),
                model: Some("Canon EOS R5"),
                gps: Some((48.8584, 2.2945)),
            },
        ),
        (
            "old.jpg",
            "retina.jpg",
            Exif {
                date: Some("2021:03:02 08:30:00"),
                make: Some("Canon"),
                model: Some("Canon EOS 5D"),
                ..Exif::default()
            },
        ),
        (
            "winter.jpg",
            "hubble_deep_field.jpg",
            Exif {
                date: Some("2023:11:20 16:45:00"),
                offset: Some("-05:00"),
                make: Some("NIKON CORPORATION"),
                model: Some("NIKON D850"),
                ..Exif::default()
            },
        ),
    ]
}

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
    // The fixture photos, and three with a date, a camera and (one) a place.
    let (photos, index) = (tmp.path().join("photos"), tmp.path().join("index"));
    let mut total = copy_photos(&photos);
    for (name, source, exif) in photos_with_exif() {
        let jpeg = std::fs::read(fixtures().join("photos").join(source)).unwrap();
        std::fs::write(photos.join(name), jpeg_with_exif(&jpeg, &exif)).unwrap();
        total += 1;
    }
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
                "--lang=en-US",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
                &format!("--user-data-dir={}", profile.display()),
                &url,
            ])
            .env("LANG", "en_US.UTF-8")
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
    assert_eq!(cards, json!(total), "every photo is a result");
    // What is shown, in words and in the address; the photos with a date show it.
    assert_eq!(
        dt.text("heading"),
        format!("{total} photos for “a cup of coffee”")
    );
    assert_eq!(dt.search(), "?q=a+cup+of+coffee");
    assert_eq!(dt.chips(), ["“a cup of coffee”"]);
    let dates = dt.eval(
        "Object.fromEntries([...document.querySelectorAll('#grid .card')].filter(c => c.querySelector('.date')) \
         .map(c => [c.querySelector('img').alt.split('/').pop(), c.querySelector('.date').textContent]))",
    );
    assert_eq!(
        dates,
        json!({"paris.jpg": "Jun 14, 2023", "old.jpg": "Mar 2, 2021", "winter.jpg": "Nov 20, 2023"})
    );
    dt.screenshot(&shots.join("desktop.png"));

    // Open one result: the full photo and its numbers.
    let opened = dt.eval("(() => { const c = document.querySelector('#grid .card'); c.click(); return c.dataset.id; })()");
    dt.wait_for(
        "the full photo",
        "document.getElementById('detail').open && document.getElementById('detail-img').complete \
         && document.getElementById('detail-img').naturalWidth > 0",
    );
    let meta = dt.eval("document.getElementById('detail-meta').textContent");
    for label in [
        "Path",
        "Copies",
        "ITC",
        "ITM logit",
        "Match",
        "Taken",
        "Camera",
        "Lens",
        "Size",
        "Place",
    ] {
        assert!(meta.as_str().unwrap().contains(label), "{meta}");
    }
    dt.screenshot(&shots.join("desktop-detail.png"));
    // Why?: the ITM head's heat map drawn over the photo, with its numbers; off again.
    assert_eq!(
        dt.eval("document.getElementById('why').hidden"),
        json!(false)
    );
    dt.eval("document.getElementById('why').click()");
    dt.wait_for(
        "the heat map",
        "!document.getElementById('detail-heat').hidden \
         && document.getElementById('why-text').textContent.startsWith('ITC')",
    );
    let heat = dt.eval(
        "(() => { const c = document.getElementById('detail-heat'), i = document.getElementById('detail-img'); \
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let alpha = 0; \
         for (let k = 3; k < d.length; k += 4) alpha = Math.max(alpha, d[k]); \
         const a = c.getBoundingClientRect(), b = i.getBoundingClientRect(); \
         return [c.width, c.height, alpha, a.width > 50 && a.left >= b.left - 1 && a.top >= b.top - 1 \
           && a.right <= b.right + 1 && a.bottom <= b.bottom + 1 \
           && (Math.abs(a.width - b.width) < 1 || Math.abs(a.height - b.height) < 1) \
           && Math.abs(a.width / a.height - i.naturalWidth / i.naturalHeight) < 0.02]; })()",
    );
    assert_eq!(heat[0], json!(16), "{heat}");
    assert_eq!(heat[1], json!(16), "{heat}");
    assert!(
        heat[2].as_u64().unwrap() > 150,
        "the hottest patch is drawn: {heat}"
    );
    assert_eq!(
        heat[3],
        json!(true),
        "the map covers the photo as drawn: {heat}"
    );
    let why = dt.eval("document.getElementById('why-text').textContent");
    assert!(why.as_str().unwrap().contains("query vector"), "{why}");
    assert!(why.as_str().unwrap().contains("ITM match"), "{why}");
    dt.screenshot(&shots.join("desktop-why.png"));
    dt.eval("document.getElementById('why').click()");
    assert_eq!(
        dt.eval("document.getElementById('detail-heat').hidden && document.getElementById('why-panel').hidden"),
        json!(true)
    );

    // More like this: the photo's neighbours, itself left out.
    dt.eval("document.getElementById('like-this').click()");
    dt.wait_for(
        "more like this",
        &format!(
            "!document.getElementById('detail').open && document.querySelectorAll('#grid .card').length === {} \
             && ![...document.querySelectorAll('#grid .card')].some(c => c.dataset.id === {opened})",
            total - 1
        ),
    );
    dt.wait_for("its thumbnails", GRID_LOADED);
    assert_eq!(dt.search(), format!("?like={}", opened.as_str().unwrap()));
    assert!(
        dt.text("heading")
            .starts_with(&format!("{} photos like ", total - 1)),
        "{}",
        dt.text("heading")
    );
    assert_eq!(
        dt.value("q"),
        "",
        "the sentence of the search before is gone"
    );

    // Drop a photo on the page.
    dt.eval(
        "(async () => { const blob = await (await fetch('/api/images/' + document.querySelector('#grid .card').dataset.id)).blob(); \
         const dt = new DataTransfer(); dt.items.add(new File([blob], 'dropped.png', {type: blob.type})); \
         document.getElementById('grid').replaceChildren(); \
         document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); })()",
    );
    dt.wait_for("the dropped photo's results", GRID_LOADED);

    // Filters: a camera narrows the results (the make and model, ignoring case) …
    dt.eval(
        "document.getElementById('q').value = 'a rocket'; document.getElementById('camera').value = 'canon'; \
         document.querySelector('#search-form button').click()",
    );
    dt.settle("the Canon photos");
    assert_eq!(dt.shown_sorted(), ["old.jpg", "paris.jpg"]);
    // … and so does a date range, both ends inclusive at the precision written.
    dt.change(&[("after", "2023"), ("before", "2023")]);
    dt.settle("the Canon photos of 2023");
    assert_eq!(dt.shown(), ["paris.jpg"]);
    assert_eq!(
        dt.text("heading"),
        "1 photo for “a rocket”, from 2023, by canon"
    );
    assert_eq!(
        dt.search(),
        "?q=a+rocket&after=2023&before=2023&camera=canon"
    );
    assert_eq!(
        dt.chips(),
        ["“a rocket”", "from 2023", "to 2023", "camera canon"]
    );
    // Removing a chip runs the search without it, and empties its input.
    dt.remove_chip("camera canon");
    dt.settle("the photos of 2023");
    assert_eq!(dt.shown_sorted(), ["paris.jpg", "winter.jpg"]);
    assert_eq!(dt.value("camera"), "");
    assert_eq!(dt.search(), "?q=a+rocket&after=2023&before=2023");
    // By date: oldest first.
    dt.change(&[("sort", "date")]);
    dt.settle("the photos of 2023 by date");
    assert_eq!(dt.shown(), ["paris.jpg", "winter.jpg"]);
    assert_eq!(
        dt.text("heading"),
        "2 photos for “a rocket”, from 2023, oldest first"
    );
    dt.remove_chip("from 2023");
    dt.settle("the photos until 2023 by date");
    assert_eq!(dt.shown(), ["old.jpg", "paris.jpg", "winter.jpg"]);
    assert_eq!(dt.value("after"), "");
    assert_eq!(dt.value("before"), "2023");

    // Back: the search before, its results and its inputs; then Back again, and Forward.
    let back = |dt: &mut DevTools, how: &str, address: &str| {
        dt.eval(&format!("history.{how}()"));
        dt.wait_for(
            &format!("{how} to {address}"),
            &format!("location.search === {address:?} && {SETTLED}"),
        );
    };
    back(
        &mut dt,
        "back",
        "?q=a+rocket&after=2023&before=2023&sort=date",
    );
    assert_eq!(dt.shown(), ["paris.jpg", "winter.jpg"]);
    assert_eq!(
        (dt.value("after"), dt.value("before"), dt.value("sort")),
        ("2023".into(), "2023".into(), "date".into())
    );
    back(&mut dt, "back", "?q=a+rocket&after=2023&before=2023");
    back(
        &mut dt,
        "back",
        "?q=a+rocket&after=2023&before=2023&camera=canon",
    );
    assert_eq!(dt.shown(), ["paris.jpg"]);
    assert_eq!(
        (dt.value("q"), dt.value("camera"), dt.value("sort")),
        ("a rocket".into(), "canon".into(), "score".into())
    );
    assert_eq!(
        dt.chips(),
        ["“a rocket”", "from 2023", "to 2023", "camera canon"]
    );
    back(&mut dt, "forward", "?q=a+rocket&after=2023&before=2023");
    assert_eq!(dt.shown_sorted(), ["paris.jpg", "winter.jpg"]);
    assert_eq!(dt.value("camera"), "");

    // A date the server cannot read: its message, no stale photos.
    dt.change(&[("after", "soon")]);
    dt.settle("the refusal");
    assert!(
        dt.text("status").starts_with("after \"soon\""),
        "{}",
        dt.text("status")
    );
    assert_eq!(dt.shown().len(), 0);

    // A slow answer overtaken by a newer search is dropped: the first search's response
    // is held back 1.5 s (and cannot be aborted), the second's is not.
    dt.eval(
        "window.slow = {pending: true, done: false, aborted: null}; window.realFetch = window.fetch; \
         window.fetch = async (url, options) => { \
           if (!window.slow.pending || !String(url).startsWith('/api/search')) return window.realFetch(url, options); \
           window.slow.pending = false; \
           const response = await window.realFetch(url, {...options, signal: undefined}); \
           await new Promise(r => setTimeout(r, 1500)); \
           window.slow.aborted = !!(options && options.signal && options.signal.aborted); \
           window.slow.done = true; return response; }",
    );
    dt.eval(
        "document.getElementById('after').value = ''; document.getElementById('before').value = ''; \
         document.querySelector('#search-form button').click(); \
         document.getElementById('camera').value = 'canon'; \
         document.querySelector('#search-form button').click();",
    );
    dt.wait_for("the slow answer", &format!("window.slow.done && {SETTLED}"));
    // Past the slow answer's arrival: the page has had it, and kept the newer one.
    dt.eval("new Promise(r => setTimeout(r, 300))");
    dt.eval("window.fetch = window.realFetch");
    assert_eq!(dt.shown_sorted(), ["old.jpg", "paris.jpg"]);
    assert_eq!(dt.text("heading"), "2 photos for “a rocket”, by canon");
    assert_eq!(dt.search(), "?q=a+rocket&camera=canon");
    assert_eq!(
        dt.eval("window.slow.aborted"),
        json!(true),
        "the older request was aborted"
    );

    // A "without" term, with more filters: the page asks for them, and says so.
    dt.change(&[("after", "2021"), ("sort", "date"), ("not", "a cat")]);
    dt.settle("the photos without a cat");
    assert_eq!(
        dt.search(),
        "?q=a+rocket&not=a+cat&after=2021&camera=canon&sort=date"
    );
    assert_eq!(
        dt.chips(),
        [
            "“a rocket”",
            "without “a cat”",
            "from 2021",
            "camera canon",
            "sort by date"
        ]
    );
    assert_eq!(
        dt.text("heading"),
        "2 photos for “a rocket”, without “a cat”, since 2021, by canon, oldest first"
    );
    let api: Value = dt.eval(
        "fetch('/api/search?q=a+rocket&not=a+cat&after=2021&camera=canon&sort=date&k=24&rerank=24').then(r => r.json())",
    );
    assert_eq!(api["query"]["not"], json!(["a cat"]), "{api}");
    let api_names: Vec<String> = api["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h["path"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(dt.shown(), api_names);
    dt.wait_for("the thumbnails", GRID_LOADED);
    dt.screenshot(&shots.join("desktop-filters.png"));
    // A match probability of 0 drops every photo: the term reached the server.
    dt.eval(
        "history.pushState(null, '', '/?q=a+rocket&not=a+cat&not_prob=0'); \
         dispatchEvent(new PopStateEvent('popstate', {state: null}))",
    );
    dt.settle("nothing left");
    assert_eq!(dt.shown().len(), 0);
    assert_eq!(dt.text("status"), "No results.");
    assert_eq!(
        (dt.value("not"), dt.value("camera"), dt.value("sort")),
        ("a cat".into(), "".into(), "score".into())
    );
    dt.change(&[("not", "")]);
    dt.settle("the photos for a rocket");
    assert_eq!(dt.shown().len(), total);

    // The detail view: date, camera, size and place (a link to a map, opened only when
    // clicked: nothing but this server has been asked for anything).
    let paris = dt.open("paris.jpg");
    let meta = dt.text("detail-meta");
    for part in ["June 14, 2023", "UTC+02:00", "Canon EOS R5", " px"] {
        assert!(meta.contains(part), "{part}: {meta}");
    }
    let link = dt.eval(
        "(() => { const a = document.querySelector('#detail-meta a'); return [a.href, a.target, a.rel]; })()",
    );
    assert_eq!(
        link,
        json!([
            "https://www.openstreetmap.org/?mlat=48.85840&mlon=2.29450#map=16/48.85840/2.29450",
            "_blank",
            "noopener noreferrer"
        ])
    );
    assert_eq!(
        dt.eval("performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))"),
        json!(true)
    );
    dt.screenshot(&shots.join("desktop-detail-meta.png"));
    // Like this, and…: the photo and a sentence.
    dt.eval("document.getElementById('like-and-q').value = 'at night'; document.querySelector('#like-and button').click()");
    dt.settle("like this, and at night");
    assert_eq!(dt.search(), format!("?q=at+night&like={paris}"));
    assert_eq!(
        dt.text("heading"),
        format!("{} photos like paris.jpg + “at night”", total - 1)
    );
    assert!(!dt.shown().contains(&"paris.jpg".to_string()));
    assert_eq!(dt.chips(), ["like paris.jpg", "“at night”"]);
    dt.wait_for("the thumbnails", GRID_LOADED);
    dt.screenshot(&shots.join("desktop-like-and.png"));
    // Texts for this photo: the sentence of the search before is not left in its box.
    let added = dt.eval(
        "fetch('/api/texts', {method: 'POST', headers: {'Content-Type': 'application/json'}, \
         body: JSON.stringify({texts: [{text: 'an eye'}, {text: 'a rocket at night'}, {text: 'coins'}]})}) \
         .then(r => r.json()).then(s => s.added)",
    );
    assert_eq!(added, json!(3));
    dt.open("old.jpg");
    dt.eval("document.getElementById('texts-for').click()");
    dt.settle("texts for the photo");
    assert_eq!(dt.value("q"), "");
    assert_eq!(dt.text("heading"), "3 texts for old.jpg");
    assert_eq!(dt.chips(), ["texts for old.jpg"]);
    assert_eq!(
        dt.eval("document.querySelectorAll('#texts .text-hit').length"),
        json!(3)
    );
    assert_eq!(dt.shown().len(), 0);

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
            total + more_total
        ),
    );
    dt.wait_for("their thumbnails", GRID_LOADED);

    // Duplicates: groups side by side, each photo with its size, date and folder, the
    // best copy first. Each fixture photo is here two or three more times with the same
    // pixels (the `more/` variants; `paris.jpg`, `old.jpg`, `winter.jpg` with EXIF).
    dt.eval("document.getElementById('dups-open').click()");
    dt.wait_for(
        "the Duplicates view",
        "!document.getElementById('dups').hidden && document.querySelector('main').hidden",
    );
    dt.eval(
        "document.getElementById('dups-threshold').value = '0.99'; \
         document.querySelector('#dups-form button[type=submit]').click()",
    );
    dt.wait_for(
        "the duplicate groups and their thumbnails",
        "document.getElementById('dups-status').textContent.includes('0.99') \
         && document.querySelectorAll('#dup-groups .dup-group').length > 0 \
         && [...document.querySelectorAll('#dup-groups img')].every(i => i.complete && i.naturalWidth > 0)",
    );
    assert_eq!(dt.eval("location.hash"), json!("#duplicates"));
    let groups = dt.eval(
        "[...document.querySelectorAll('.dup-group')].map(g => [...g.querySelectorAll('.dup-member .name')].map(n => n.textContent))",
    );
    // Groups in the order of their best copy's path; in a group the dated copy first (the
    // pixels are the same), then by path (`more/` before `photos/`).
    let group = |first: Option<&str>, name: &str| {
        let mut g: Vec<String> = first.map(String::from).into_iter().collect();
        g.extend([format!("0-{name}"), format!("1-{name}"), name.to_string()]);
        g
    };
    let expected = vec![
        group(None, "camera.png"),
        group(None, "chelsea.png"),
        group(None, "coffee.png"),
        group(None, "coins.png"),
        group(Some("old.jpg"), "retina.jpg"),
        group(Some("paris.jpg"), "rocket.jpg"),
        group(Some("winter.jpg"), "hubble_deep_field.jpg"),
    ];
    assert_eq!(groups, json!(expected));
    let paris = dt.eval(
        "(() => { const m = [...document.querySelectorAll('.dup-member')].find(m => m.querySelector('.name').textContent === 'paris.jpg'); \
         return [m.querySelector('.best') !== null, m.querySelector('time').textContent, m.textContent.includes('640 × 427 px'), \
         m.querySelector('a.folder').textContent]; })()",
    );
    assert_eq!(
        paris,
        json!([true, "Jun 14, 2023", true, photos.display().to_string()])
    );
    let sims =
        dt.eval("[...document.querySelectorAll('.dup-member .sim')].map(s => s.textContent)");
    assert!(
        sims.as_array()
            .unwrap()
            .iter()
            .all(|s| s == "similarity 1.000"),
        "{sims}"
    );
    assert!(!dt.overflows());
    dt.screenshot(&shots.join("desktop-duplicates.png"));
    dt.eval("document.getElementById('dups-close').click()");
    dt.wait_for(
        "the search again",
        "document.getElementById('dups').hidden && !document.querySelector('main').hidden",
    );

    // Phone width: the same search, nothing wider than the screen.
    dt.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": true}),
    );
    dt.eval(
        "document.getElementById('grid').replaceChildren(); \
         document.getElementById('q').value = 'a cup of coffee'; \
         document.querySelector('#search-form button').click()",
    );
    dt.wait_for("the grid at phone width", VISIBLE_LOADED);
    assert!(!dt.overflows());
    dt.screenshot(&shots.join("phone.png"));
    assert_eq!(dt.eval("window.cspViolations"), json!([]));

    // A search's address, opened: that search runs, its inputs filled in.
    dt.eval("location.href = '/?q=a+rocket&camera=canon&not=a+cat&after=2021&sort=date'");
    dt.wait_for(
        "the search from its address",
        &format!(
            "document.readyState === 'complete' && location.search.includes('camera') && {SETTLED}"
        ),
    );
    assert_eq!(
        (
            dt.value("q"),
            dt.value("camera"),
            dt.value("after"),
            dt.value("sort"),
            dt.value("not")
        ),
        (
            "a rocket".into(),
            "canon".into(),
            "2021".into(),
            "date".into(),
            "a cat".into()
        )
    );
    let canon = dt.shown();
    assert!(
        canon
            .iter()
            .all(|n| ["old.jpg", "paris.jpg"].contains(&n.as_str())),
        "{canon:?}"
    );
    dt.wait_for("the thumbnails at phone width", VISIBLE_LOADED);
    assert!(!dt.overflows());
    // The filters fold away at phone width, behind a button that counts those in use.
    let visible = "document.getElementById('filters').getBoundingClientRect().height > 0";
    assert_eq!(dt.eval(visible), json!(false));
    assert_eq!(dt.text("filters-toggle"), "Filters (4)");
    dt.screenshot(&shots.join("phone-filters.png"));
    dt.eval("document.getElementById('filters-toggle').click()");
    assert_eq!(dt.eval(visible), json!(true));
    assert!(!dt.overflows());
    dt.screenshot(&shots.join("phone-filters-open.png"));
    dt.change(&[("not", "")]);
    dt.settle("the Canon photos since 2021");
    assert_eq!(dt.shown(), ["old.jpg", "paris.jpg"]);
    dt.open("paris.jpg");
    assert!(!dt.overflows());
    dt.screenshot(&shots.join("phone-detail.png"));
    eprintln!("screenshots in {}", shots.display());
    assert_eq!(dt.eval("window.cspViolations"), json!([]));
    let refused: Vec<&String> = dt
        .log
        .iter()
        .filter(|l| l.contains("Content Security Policy") || l.contains("Refused to"))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}
