//! `qseek serve`'s defences, proved over real HTTP against the binary (the tiny fixture
//! model, real photos, raw HTTP/1.1 on a local port):
//!
//! - only this server's own names are served (`Host`: DNS rebinding gets 421);
//! - another site's page can neither change nor read anything (`Origin`,
//!   `Sec-Fetch-Site`: 403), though a link may open the page;
//! - no file outside the served folders is indexed or served, symbolic links included;
//!   indexing one file opens no folder; a refused folder does not say whether it exists;
//! - uploads are limited in pixels before decoding, and decodes in number (503 with
//!   `Retry-After` beyond the queue); `rerank`, texts and bodies have limits;
//! - slow, idle and surplus connections cannot hold the server;
//! - thumbnails made by many requests at once all arrive;
//! - every answer carries the browser hardening headers, the page a strict CSP;
//! - the token works percent-encoded, as a header and as an `HttpOnly` cookie, and never
//!   shows on the command line.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::collection::Collection;
use common::server::{index_body, multipart, read_reply, Reply, Server};
use common::{arg, copy_photos, many_photos, qseek, stderr};
use serde_json::Value;

/// A request body that adds one text.
const ONE_TEXT: &[u8] = br#"{"texts": [{"text": "x"}]}"#;

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// (image id, path) of every indexed image, as a text search lists them.
fn images(server: &Server) -> Vec<(u64, String)> {
    server.get_json("/api/search?q=a&k=100&rerank=0")["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let id = r["image_id"].as_u64().unwrap();
            (id, r["path"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The id of the indexed image whose path ends with `name`.
fn id_of(server: &Server, name: &str) -> u64 {
    let all = images(server);
    all.iter()
        .find(|(_, p)| p.ends_with(name))
        .unwrap_or_else(|| panic!("{name} not among {all:?}"))
        .0
}

fn texts(server: &Server) -> Vec<Value> {
    server.get_json("/api/texts")["texts"]
        .as_array()
        .unwrap()
        .clone()
}

/// A reply's body for a message: text as it is (cut short), anything else by size.
fn brief(r: &Reply) -> String {
    let textual = r.content_type.is_empty()
        || r.content_type.starts_with("application/json")
        || r.content_type.starts_with("text/");
    if textual {
        r.text().chars().take(600).collect()
    } else {
        format!("({} bytes of {})", r.body.len(), r.content_type)
    }
}

/// Checks a JSON error answer: its status and `error.kind`.
fn assert_error(r: &Reply, status: u16, kind: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", brief(r));
    let doc: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    assert_eq!(doc["error"]["kind"], kind, "{what}: {}", brief(r));
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {doc}"
    );
}

/// Owned request headers of a table row.
type Headers = Vec<(&'static str, String)>;

/// A table row: (what, method, path, headers, body, expected status).
type Case = (&'static str, &'static str, String, Headers, Vec<u8>, u16);

fn headers(pairs: &[(&'static str, &str)]) -> Headers {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// A request with owned headers, `Host` as given.
fn send(
    server: &Server,
    host: Option<&str>,
    method: &str,
    path: &str,
    hs: &Headers,
    body: &[u8],
) -> Reply {
    let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    server.request_with_host(host, method, path, &hs, body)
}

fn photo_bytes(name: &str) -> Vec<u8> {
    std::fs::read(common::fixtures().join("photos").join(name)).unwrap()
}

// --- A. Host ------------------------------------------------------------------------

#[test]
fn a_foreign_host_is_refused_on_every_route_and_changes_nothing() {
    let c = Collection::indexed();
    let server = c.serve(&[]);
    let port = server.port();
    let id = images(&server)[0].0;
    let texts_before = texts(&server).len();
    // (what, method, path, headers, body)
    let routes: Vec<(&str, &str, String, Headers, Vec<u8>)> = vec![
        ("info", "GET", "/api/info".into(), vec![], vec![]),
        ("page", "GET", "/".into(), vec![], vec![]),
        ("image", "GET", format!("/api/images/{id}"), vec![], vec![]),
        (
            "thumbnail",
            "GET",
            format!("/api/images/{id}/thumbnail"),
            vec![],
            vec![],
        ),
        ("search", "GET", "/api/search?q=cat".into(), vec![], vec![]),
        (
            "add texts",
            "POST",
            "/api/texts".into(),
            headers(&[JSON]),
            ONE_TEXT.to_vec(),
        ),
        (
            "start indexing",
            "POST",
            "/api/index".into(),
            headers(&[JSON]),
            index_body(&c.photos),
        ),
        (
            "cancel indexing",
            "DELETE",
            "/api/index".into(),
            vec![],
            vec![],
        ),
        (
            "unknown route",
            "GET",
            "/api/nothing".into(),
            vec![],
            vec![],
        ),
    ];
    let foreign = [
        format!("attacker.example:{port}"),
        "attacker.example".to_string(),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
    ];
    let hosts = foreign.iter().map(|h| Some(h.as_str())).chain([None]);
    for host in hosts {
        for (what, method, path, hs, body) in &routes {
            let r = send(&server, host, method, path, hs, body);
            assert_error(&r, 421, "misdirected", &format!("{what}, Host {host:?}"));
        }
    }
    // Nothing happened: no text added, no run started, no thumbnail made.
    assert_eq!(texts(&server).len(), texts_before);
    assert_eq!(server.get_json("/api/index")["state"], "idle");
    assert!(!c.index.join("thumbnails").exists());

    // This machine's own names, any case, with or without the port.
    for host in [
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        "localhost".to_string(),
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("[::1]:{port}"),
    ] {
        let r = server.request_with_host(Some(&host), "GET", "/api/info", &[], b"");
        assert_eq!(r.status, 200, "Host {host}: {}", brief(&r));
    }
}

#[test]
fn a_public_host_is_served_and_other_names_are_still_refused() {
    let c = Collection::indexed();
    let server = c.serve(&[
        "--public-host",
        "photos.example.org",
        "--public-host",
        "search.example.net",
    ]);
    let port = server.port();
    let local = format!("localhost:{port}");
    for (host, status) in [
        ("photos.example.org", 200),
        ("PHOTOS.Example.org:8443", 200),
        ("search.example.net", 200),
        (local.as_str(), 200),
        ("example.org", 421),
        ("evil.photos.example.org", 421),
        ("photos.example.org.attacker.example", 421),
    ] {
        let r = server.request_with_host(Some(host), "GET", "/api/info", &[], b"");
        assert_eq!(r.status, status, "Host {host}: {}", brief(&r));
    }
    // A public name is this server's own origin too, also behind a proxy that sends its
    // own Host.
    let addr = server.addr.clone();
    for (host, origin, status) in [
        ("photos.example.org", "https://photos.example.org", 200),
        (addr.as_str(), "https://photos.example.org", 200),
        ("photos.example.org", "https://example.org", 403),
    ] {
        let r = server.request_with_host(
            Some(host),
            "POST",
            "/api/texts",
            &[JSON, ("Origin", origin)],
            ONE_TEXT,
        );
        assert_eq!(
            r.status,
            status,
            "Host {host}, Origin {origin}: {}",
            brief(&r)
        );
    }
    drop(server);
    // A name is what `Host` carries: a URL or a path is refused at start, never silently
    // unmatched.
    for given in [
        "https://photos.example.org",
        "photos.example.org/",
        "",
        "a b",
    ] {
        let out = c.run(&[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "-q",
            "--public-host",
            given,
        ]);
        assert_eq!(out.status.code(), Some(2), "{given:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--public-host"),
            "{given:?}: {}",
            stderr(&out)
        );
    }
}

// --- B. Cross-site requests -----------------------------------------------------------

#[test]
fn a_cross_site_request_is_refused_and_changes_nothing() {
    let c = Collection::indexed();
    let server = c.serve(&[]);
    let id = images(&server)[0].0;
    let own = format!("http://{}", server.addr);
    let own_tls = format!("https://{}", server.addr);
    let evil = "http://evil.example";
    let (form_type, form) = multipart(&photo_bytes("coffee.png"));
    let text = |t: &str| {
        serde_json::json!({"texts": [{"text": t}]})
            .to_string()
            .into_bytes()
    };
    let image = format!("/api/images/{id}");
    let cross = |dest: &str| {
        headers(&[
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Mode", "no-cors"),
            ("Sec-Fetch-Dest", dest),
        ])
    };
    let navigate = |site: &str, dest: &str| {
        headers(&[
            ("Sec-Fetch-Site", site),
            ("Sec-Fetch-Mode", "navigate"),
            ("Sec-Fetch-Dest", dest),
        ])
    };
    let cases: Vec<Case> = vec![
        (
            "texts from another site",
            "POST",
            "/api/texts".into(),
            headers(&[JSON, ("Origin", evil)]),
            text("evil one"),
            403,
        ),
        (
            "texts from another port",
            "POST",
            "/api/texts".into(),
            headers(&[JSON, ("Origin", "http://127.0.0.1:1")]),
            text("evil two"),
            403,
        ),
        (
            "texts from an opaque origin",
            "POST",
            "/api/texts".into(),
            headers(&[JSON, ("Origin", "null")]),
            text("evil three"),
            403,
        ),
        (
            "a cross-site form's search",
            "POST",
            "/api/search/image".into(),
            headers(&[("Content-Type", form_type.as_str()), ("Origin", evil)]),
            form.clone(),
            403,
        ),
        (
            "indexing from another site",
            "POST",
            "/api/index".into(),
            headers(&[JSON, ("Origin", evil)]),
            index_body(&c.photos),
            403,
        ),
        (
            "cancelling from another site",
            "DELETE",
            "/api/index".into(),
            headers(&[("Origin", evil)]),
            vec![],
            403,
        ),
        (
            "a read with another site's Origin",
            "GET",
            "/api/info".into(),
            headers(&[("Origin", evil)]),
            vec![],
            403,
        ),
        (
            "a cross-site read",
            "GET",
            "/api/info".into(),
            cross("empty"),
            vec![],
            403,
        ),
        (
            "a same-site read",
            "GET",
            "/api/info".into(),
            headers(&[("Sec-Fetch-Site", "same-site")]),
            vec![],
            403,
        ),
        (
            "a cross-site <img>",
            "GET",
            image.clone(),
            cross("image"),
            vec![],
            403,
        ),
        (
            "a cross-site thumbnail",
            "GET",
            format!("{image}/thumbnail"),
            cross("image"),
            vec![],
            403,
        ),
        (
            "the page in another site's frame",
            "GET",
            "/".into(),
            navigate("cross-site", "iframe"),
            vec![],
            403,
        ),
        (
            "a link from another site to the page",
            "GET",
            "/".into(),
            navigate("cross-site", "document"),
            vec![],
            200,
        ),
        (
            "the page's own read",
            "GET",
            "/api/info".into(),
            headers(&[("Sec-Fetch-Site", "same-origin")]),
            vec![],
            200,
        ),
        (
            "the page's own <img>",
            "GET",
            image.clone(),
            headers(&[
                ("Sec-Fetch-Site", "same-origin"),
                ("Sec-Fetch-Dest", "image"),
            ]),
            vec![],
            200,
        ),
        (
            "typed in the address bar",
            "GET",
            "/".into(),
            navigate("none", "document"),
            vec![],
            200,
        ),
        (
            "the page's own texts",
            "POST",
            "/api/texts".into(),
            headers(&[
                JSON,
                ("Origin", own.as_str()),
                ("Sec-Fetch-Site", "same-origin"),
            ]),
            text("from the page"),
            200,
        ),
        (
            "the page's own texts, behind TLS",
            "POST",
            "/api/texts".into(),
            headers(&[JSON, ("Origin", own_tls.as_str())]),
            text("from the page over https"),
            200,
        ),
        (
            "texts from a client without Origin",
            "POST",
            "/api/texts".into(),
            headers(&[JSON]),
            text("from curl"),
            200,
        ),
        (
            "the page's own search",
            "POST",
            "/api/search/image".into(),
            headers(&[
                ("Content-Type", form_type.as_str()),
                ("Origin", own.as_str()),
            ]),
            form.clone(),
            200,
        ),
    ];
    for (what, method, path, hs, body, status) in &cases {
        let r = send(&server, Some(&server.addr), method, path, hs, body);
        if *status == 403 {
            assert_error(&r, 403, "forbidden", what);
        } else {
            assert_eq!(r.status, *status, "{what}: {}", brief(&r));
        }
    }
    // Only the allowed requests added texts; no run was started.
    let mut added: Vec<String> = texts(&server)
        .iter()
        .map(|t| t["text"].as_str().unwrap().to_string())
        .collect();
    added.sort();
    assert_eq!(
        added,
        ["from curl", "from the page", "from the page over https"]
    );
    assert_eq!(server.get_json("/api/index")["state"], "idle");
}

// --- C. Symbolic links ----------------------------------------------------------------

/// `allowed/` with one photo and a link `allowed/outside` to `private/`, which holds two.
fn allowed_with_a_link_out(c: &Collection) -> (PathBuf, PathBuf) {
    let (allowed, private) = (c.path("allowed"), c.path("private"));
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&private).unwrap();
    let photos = common::fixtures().join("photos");
    std::fs::copy(photos.join("coffee.png"), allowed.join("coffee.png")).unwrap();
    for name in ["camera.png", "coins.png"] {
        std::fs::copy(photos.join(name), private.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(&private, allowed.join("outside")).unwrap();
    (allowed, private)
}

#[test]
fn the_server_never_follows_a_link_out_of_an_allowed_folder() {
    let c = Collection::empty();
    let (allowed, _) = allowed_with_a_link_out(&c);
    let server = c.serve(&["--allow", &arg(&allowed)]);
    let r = server.start_indexing(&allowed);
    assert_eq!(r.status, 202, "{}", brief(&r));
    let status = server.wait_for_indexing(Duration::from_secs(60), Duration::from_millis(50));
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(server.get_json("/api/info")["images"], 1);
    let found = images(&server);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found
            .iter()
            .all(|(_, p)| !p.contains("private") && !p.contains("outside")),
        "{found:?}"
    );
}

#[test]
fn a_photo_swapped_for_a_link_after_indexing_is_not_served() {
    let c = Collection::indexed();
    let private = c.path("private");
    std::fs::create_dir(&private).unwrap();
    // Same bytes elsewhere: the content hash still matches through the link.
    let swapped = c.photos.join("coffee.png");
    std::fs::rename(&swapped, private.join("coffee.png")).unwrap();
    std::os::unix::fs::symlink(private.join("coffee.png"), &swapped).unwrap();

    let server = c.serve(&[]);
    let id = id_of(&server, "/coffee.png");
    let other = id_of(&server, "/rocket.jpg");
    for path in [
        format!("/api/images/{id}"),
        format!("/api/images/{id}/thumbnail"),
    ] {
        let r = server.get(&path);
        assert_error(&r, 403, "forbidden", &path);
    }
    for path in [
        format!("/api/images/{other}"),
        format!("/api/images/{other}/thumbnail"),
    ] {
        let r = server.get(&path);
        assert_eq!(r.status, 200, "{path}: {}", brief(&r));
    }
}

#[test]
fn the_cli_still_follows_links_when_indexing() {
    let c = Collection::empty();
    let (allowed, _) = allowed_with_a_link_out(&c);
    c.index(&[&allowed], &[]);
    let out = qseek(&["info", "--json", "--index", &arg(&c.index)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["images"], 3, "{info}");
}

// --- D, E. What may be indexed --------------------------------------------------------

#[test]
fn indexing_one_file_does_not_open_its_folder() {
    let c = Collection::empty();
    let (lone, sub) = (c.path("lone"), c.path("lone/sub"));
    std::fs::create_dir_all(&sub).unwrap();
    let photos = common::fixtures().join("photos");
    std::fs::copy(photos.join("coffee.png"), lone.join("one.png")).unwrap();
    std::fs::copy(photos.join("rocket.jpg"), sub.join("two.jpg")).unwrap();
    c.index(&[&lone.join("one.png")], &[]);

    let server = c.serve(&[]);
    for folder in [&sub, &lone] {
        let r = server.start_indexing(folder);
        assert_error(&r, 400, "bad_request", &arg(folder));
    }
    assert_eq!(server.get_json("/api/index")["state"], "idle");
}

#[test]
fn a_subfolder_of_an_indexed_folder_may_be_indexed_again() {
    let c = Collection::empty();
    copy_photos(&c.photos);
    let sub = c.photos.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::rename(c.photos.join("rocket.jpg"), sub.join("rocket.jpg")).unwrap();
    c.index(&[&c.photos], &[]);

    let server = c.serve(&[]);
    let r = server.start_indexing(&sub);
    assert_eq!(r.status, 202, "{}", brief(&r));
    assert_eq!(
        server.wait_for_indexing(Duration::from_secs(60), Duration::from_millis(50))["state"],
        "done"
    );
}

#[test]
fn a_refused_folder_does_not_say_whether_it_exists() {
    let c = Collection::indexed();
    let server = c.serve(&["--allow", &arg(&c.photos)]);
    let answers: Vec<(String, Value)> = ["/root/.ssh", "/no-such-dir-qseek", "/etc"]
        .iter()
        .map(|folder| {
            let r = server.request(
                "POST",
                "/api/index",
                &[JSON],
                &index_body(Path::new(folder)),
            );
            assert_error(&r, 400, "bad_request", folder);
            // The whole error, the path itself taken out.
            let error = r.json()["error"].to_string().replace(folder, "FOLDER");
            (folder.to_string(), serde_json::from_str(&error).unwrap())
        })
        .collect();
    for (folder, error) in &answers[1..] {
        assert_eq!(
            error, &answers[0].1,
            "{folder} and {} are told apart",
            answers[0].0
        );
    }
}

// --- F. Bombs and decode limits -------------------------------------------------------

/// Deflate's bit stream: values least significant bit first, Huffman codes most
/// significant bit first.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, count: u32) {
        self.acc |= value << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn code(&mut self, code: u64, len: u32) {
        let reversed = (0..len).fold(0, |r, i| r | (((code >> i) & 1) << (len - 1 - i)));
        self.put(reversed, len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream of `n` (≥ 1) zero bytes, about 1 byte per 1000: one dynamic-Huffman
/// block whose codes are literal 0 (`10`), end of block (`11`), length 258 (`0`) and
/// distance 1 (`0`), so each 258 zeros cost two bits.
fn zlib_zeros(n: u64) -> Vec<u8> {
    let mut b = Bits::default();
    b.put(1, 1); // the last block
    b.put(2, 2); // dynamic Huffman codes
    b.put(286 - 257, 5); // literal/length codes
    b.put(2 - 1, 5); // distance codes
    b.put(18 - 4, 4); // code length codes, in this order:
    const ORDER: [usize; 18] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1];
    let mut lengths = [0u64; 19];
    (lengths[18], lengths[1], lengths[2]) = (1, 2, 2);
    for s in ORDER {
        b.put(lengths[s], 3);
    }
    // Code length codes: 18 (zeros, 11 to 138) `0`, length 1 `10`, length 2 `11`.
    let zeros = |b: &mut Bits, count: u64| {
        b.code(0, 1);
        b.put(count - 11, 7);
    };
    b.code(0b11, 2); // literal 0: 2 bits
    zeros(&mut b, 138); // literals 1..=255: none
    zeros(&mut b, 117);
    b.code(0b11, 2); // end of block: 2 bits
    zeros(&mut b, 28); // lengths 3..=257: none
    b.code(0b10, 2); // length 258: 1 bit
    b.code(0b10, 2); // distances 1 and 2: 1 bit each
    b.code(0b10, 2);
    b.code(0b10, 2); // literal 0
    let (matches, rest) = ((n - 1) / 258, (n - 1) % 258);
    let mut left = matches;
    while left >= 16 {
        b.put(0, 32); // 16 × (length 258, distance 1)
        left -= 16;
    }
    b.put(0, 2 * left as u32);
    for _ in 0..rest {
        b.code(0b10, 2);
    }
    b.code(0b11, 2); // end of block
    let mut z = vec![0x78, 0x01];
    z.extend(b.finish());
    // Adler-32 of zeros: a stays 1, b adds 1 per byte.
    let adler = ((n % 65521) << 16) | 1;
    z.extend((adler as u32).to_be_bytes());
    z
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A valid PNG, `width`×`height`, 16-bit RGBA, every pixel zero: small however large.
fn zero_png(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(kind);
        png.extend(data);
        png.extend(crc32(&[kind, data]).to_be_bytes());
    };
    let mut header = width.to_be_bytes().to_vec();
    header.extend(height.to_be_bytes());
    header.extend([16, 6, 0, 0, 0]); // 16 bits, RGBA, deflate, filters, no interlace
    chunk(b"IHDR", &header);
    // Each row: filter 0, then 8 bytes a pixel.
    let raw = u64::from(height) * (1 + 8 * u64::from(width));
    for part in zlib_zeros(raw).chunks(1 << 20) {
        chunk(b"IDAT", part);
    }
    chunk(b"IEND", b"");
    png
}

#[test]
fn the_handmade_png_is_a_valid_image() {
    let img = image::load_from_memory(&zero_png(67, 5)).unwrap();
    assert_eq!((img.width(), img.height()), (67, 5));
    assert_eq!(img.color(), image::ColorType::Rgba16);
    assert!(img.as_bytes().iter().all(|&b| b == 0));
    let bomb = zero_png(10_000, 10_000);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let reader = image::ImageReader::new(std::io::Cursor::new(&bomb))
        .with_guessed_format()
        .unwrap();
    assert_eq!(reader.into_dimensions().unwrap(), (10_000, 10_000));
}

/// Sends `count` uploads at once, one thread each; each one's reply and time.
fn uploads_at_once(server: &Server, body: &[u8], count: usize) -> Vec<(Reply, Duration)> {
    let barrier = Barrier::new(count);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    let r = server.request(
                        "POST",
                        "/api/search/image?rerank=0",
                        &[("Content-Type", "image/png")],
                        body,
                    );
                    (r, start.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// One ordinary upload search, so that what any search allocates is in the baseline.
fn warm_up(server: &Server) {
    let r = server.request(
        "POST",
        "/api/search/image?rerank=0",
        &[("Content-Type", "image/png")],
        &photo_bytes("coffee.png"),
    );
    assert_eq!(r.status, 200, "{}", brief(&r));
}

const MIB: u64 = 1 << 20;

#[test]
fn an_image_declaring_a_huge_size_is_refused_from_its_header() {
    let c = Collection::indexed();
    let server = c.serve(&[]);
    warm_up(&server);
    let bomb = zero_png(10_000, 10_000);
    let before = server.peak_memory();
    let start = Instant::now();
    let r = server.request(
        "POST",
        "/api/search/image",
        &[("Content-Type", "image/png")],
        &bomb,
    );
    assert_error(&r, 413, "too_large", "one bomb");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    for (r, took) in uploads_at_once(&server, &bomb, 4) {
        assert_error(&r, 413, "too_large", "four bombs");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    let grew = server.peak_memory().saturating_sub(before);
    eprintln!("five bombs: peak memory grew by {} KiB", grew / 1024);
    assert!(grew < 64 * MIB, "peak memory grew by {} MiB", grew / MIB);
}

#[test]
fn decodes_at_once_are_limited_and_beyond_the_queue_get_503() {
    let c = Collection::indexed();
    let server = c.serve(&["--max-upload-megapixels", "16", "--max-decodes", "2"]);
    warm_up(&server);
    // 15.9 megapixels, 16-bit RGBA: 127 MB decoded, ~11 bytes a pixel with its RGB copy.
    let big = zero_png(4000, 3975);
    let before = server.peak_memory();
    let replies = uploads_at_once(&server, &big, 6);
    let mut ok = 0;
    for (r, _) in &replies {
        match r.status {
            200 => ok += 1,
            503 => assert!(
                r.header("retry-after").is_some_and(|v| !v.is_empty()),
                "503 without Retry-After: {}",
                brief(r)
            ),
            s => panic!("status {s}: {}", brief(r)),
        }
    }
    assert!(ok >= 2, "only {ok} of 6 decoded");
    let grew = server.peak_memory().saturating_sub(before);
    let limit = 2 * 11 * 16_000_000 + 6 * big.len() as u64 + 96 * MIB;
    eprintln!(
        "six decodes: {ok} answered 200; peak memory grew by {} MiB (limit {} MiB)",
        grew / MIB,
        limit / MIB
    );
    assert!(
        grew < limit,
        "peak memory grew by {} MiB (limit {} MiB)",
        grew / MIB,
        limit / MIB
    );
}

// --- G. Timeouts and connections ------------------------------------------------------

/// Reads until the server closes the connection, or until it has answered with one of
/// `early` (a status it may send instead of closing); `Err` if neither happens within
/// `limit`. `Ok`: how long it took and the status of anything it answered.
fn wait_for_close(
    stream: &mut TcpStream,
    limit: Duration,
    early: &[u16],
) -> Result<(Duration, Option<u16>), String> {
    let start = Instant::now();
    let mut got = Vec::new();
    let status = |got: &[u8]| -> Option<u16> {
        let line = std::str::from_utf8(got.get(..12)?).ok()?;
        line.strip_prefix("HTTP/1.1 ")?.parse().ok()
    };
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!(
                "still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Ok((start.elapsed(), status(&got))),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                let head_done = got.windows(4).any(|w| w == b"\r\n\r\n");
                if head_done && status(&got).is_some_and(|s| early.contains(&s)) {
                    return Ok((start.elapsed(), status(&got)));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            // Reset: closed.
            Err(_) => return Ok((start.elapsed(), status(&got))),
        }
    }
}

#[test]
fn slow_and_idle_connections_are_closed() {
    let c = Collection::indexed();
    let server = c.serve(&["--header-timeout", "2", "--body-timeout", "2"]);
    let limit = Duration::from_secs(6);
    let host = &server.addr;

    // Headers that never end.
    let mut slow = server.connect(limit);
    write!(slow, "GET / HTTP/1.1\r\nHost: {host}\r\n").unwrap();
    let (_, status) = wait_for_close(&mut slow, limit, &[]).expect("unfinished headers");
    assert!(matches!(status, None | Some(408)), "{status:?}");

    // A kept-alive connection that goes quiet after one request.
    let mut idle = server.connect(limit);
    write!(idle, "GET /api/health HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let r = read_reply(&mut idle).unwrap().expect("a reply");
    assert_eq!(r.status, 200, "{}", brief(&r));
    let (_, status) = wait_for_close(&mut idle, limit, &[]).expect("an idle connection");
    assert!(matches!(status, None | Some(408)), "{status:?}");

    // A body that stops coming.
    let mut stalled = server.connect(limit);
    write!(
        stalled,
        "POST /api/texts HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"texts\": "
    )
    .unwrap();
    let (_, status) = wait_for_close(&mut stalled, limit, &[408, 400]).expect("a body that stalls");
    assert!(matches!(status, None | Some(408 | 400)), "{status:?}");
    // Nothing was added by the half request.
    assert!(texts(&server).is_empty());
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_one() {
    let c = Collection::indexed();
    let server = c.serve(&["--max-connections", "3", "--header-timeout", "5"]);
    let host = &server.addr;
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = server.connect(Duration::from_secs(10));
            write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = server.connect(Duration::from_secs(1));
    write!(
        fourth,
        "GET /api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    match read_reply(&mut fourth) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!(
            "a fourth connection was served at once: {:?}",
            other.map(|r| r.map(|r| r.status))
        ),
    }
    drop(held);
    fourth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = read_reply(&mut fourth)
        .unwrap()
        .expect("a reply once a slot is free");
    assert_eq!(r.status, 200, "{}", brief(&r));
}

#[test]
fn a_declared_body_over_the_limit_gets_413_before_it_is_sent() {
    let c = Collection::indexed();
    let server = c.serve(&[]);
    let host = &server.addr;
    for (path, content_type, length) in [
        ("/api/search/image", "image/png", 1_000_000_000),
        ("/api/texts", "application/json", 5_000_000),
    ] {
        let mut stream = server.connect(Duration::from_secs(5));
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
        )
        .unwrap();
        let r = read_reply(&mut stream)
            .unwrap_or_else(|e| panic!("{path}: no answer within 5 s without the body: {e}"))
            .unwrap_or_else(|| panic!("{path}: closed without an answer"));
        assert_error(&r, 413, "too_large", path);
    }
}

// --- H, K, L. Request limits ----------------------------------------------------------

#[test]
fn rerank_is_capped_at_256() {
    let c = Collection::indexed();
    let server = c.serve(&[]);
    let id = images(&server)[0].0;
    let coffee = photo_bytes("coffee.png");
    let png = || headers(&[("Content-Type", "image/png")]);
    let get = |what, path: String, status| (what, "GET", path, vec![], vec![], status);
    let post =
        |what, path: &str, status| (what, "POST", path.into(), png(), coffee.clone(), status);
    let cases: Vec<Case> = vec![
        get(
            "u64::MAX",
            "/api/search?q=cat&k=1&rerank=18446744073709551615".into(),
            400,
        ),
        get("257", "/api/search?q=cat&k=1&rerank=257".into(), 400),
        get("256", "/api/search?q=cat&k=1&rerank=256".into(), 200),
        get(
            "by id, 257",
            format!("/api/search/image?id={id}&rerank=257"),
            400,
        ),
        get(
            "by id, 256",
            format!("/api/search/image?id={id}&rerank=256"),
            200,
        ),
        post("upload, 257", "/api/search/image?rerank=257", 400),
        post("upload, 256", "/api/search/image?rerank=256", 200),
    ];
    for (what, method, path, hs, body, status) in &cases {
        let r = send(&server, Some(&server.addr), method, path, hs, body);
        if *status == 400 {
            assert_error(&r, 400, "bad_request", what);
        } else {
            assert_eq!(r.status, *status, "{what}: {}", brief(&r));
        }
    }
}

/// A text of exactly `chars` characters: words of two letters.
fn text_of(chars: usize) -> String {
    (0..chars)
        .map(|i| if i % 3 == 2 { ' ' } else { 'a' })
        .collect()
}

#[test]
fn texts_are_limited_in_length_and_number() {
    let c = Collection::indexed();
    let server = c.serve(&[]);
    let one = |t: String| serde_json::json!({"texts": [{"text": t}]}).to_string();
    let many =
        serde_json::json!({"texts": vec![serde_json::json!({"text": "a b"}); 1001]}).to_string();
    // (what, body, status, kind)
    let cases = [
        (
            "a text of 1001 characters",
            one(text_of(1001)),
            400,
            "bad_request",
        ),
        ("a text of 1000 characters", one(text_of(1000)), 200, ""),
        ("1001 texts", many, 413, "too_large"),
    ];
    for (what, body, status, kind) in cases {
        let r = server.request("POST", "/api/texts", &[JSON], body.as_bytes());
        if status == 200 {
            assert_eq!(r.status, 200, "{what}: {}", brief(&r));
        } else {
            assert_error(&r, status, kind, what);
        }
    }
    let list = texts(&server);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["text"], text_of(1000));
}

#[test]
fn a_second_indexing_run_while_one_runs_gets_409() {
    let c = Collection::indexed();
    let new = c.path("new");
    many_photos(&new, 8);
    let server = c.serve(&["--allow", &arg(&new), "--batch", "2"]);
    let first = server.start_indexing(&new);
    let second = server.start_indexing(&new);
    assert_eq!(first.status, 202, "{}", brief(&first));
    assert_error(&second, 409, "in_use", "a second run");
    server.request("DELETE", "/api/index", &[], b"");
}

// --- I. Thumbnails --------------------------------------------------------------------

#[test]
fn new_thumbnails_asked_for_by_many_requests_at_once_all_arrive() {
    let c = Collection::empty();
    copy_photos(&c.photos);
    many_photos(&c.photos.join("many"), 3);
    c.index(&[&c.photos], &[]);
    let server = c.serve(&[]);
    let ids: Vec<u64> = images(&server).iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 28);
    // Four groups of eight threads, each group through every id from its own quarter:
    // eight requests at once for each thumbnail not made yet.
    let (threads, groups) = (32, 4);
    let barrier = Barrier::new(threads);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, ids, server) = (&barrier, &ids, &server);
                scope.spawn(move || {
                    barrier.wait();
                    let first = (t % groups) * ids.len() / groups;
                    let mut failures = Vec::new();
                    for id in ids[first..].iter().chain(&ids[..first]) {
                        let r = server.get(&format!("/api/images/{id}/thumbnail"));
                        if (r.status, r.content_type.as_str()) != (200, "image/jpeg") {
                            failures.push(format!("{id}: {} {}", r.status, brief(&r)));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        threads * ids.len(),
        &failures[..failures.len().min(5)]
    );
}

// --- J. Headers -----------------------------------------------------------------------

#[test]
fn every_response_carries_the_hardening_headers() {
    let c = Collection::indexed();
    let server = c.serve(&[]);
    let id = images(&server)[0].0;
    let foreign = format!("attacker.example:{}", server.port());
    // (what, host, path, status, an image)
    let cases: Vec<(&str, &str, String, u16, bool)> = vec![
        ("page", &server.addr, "/".into(), 200, false),
        ("JSON", &server.addr, "/api/info".into(), 200, false),
        (
            "image",
            &server.addr,
            format!("/api/images/{id}"),
            200,
            true,
        ),
        (
            "thumbnail",
            &server.addr,
            format!("/api/images/{id}/thumbnail"),
            200,
            true,
        ),
        ("not found", &server.addr, "/api/nothing".into(), 404, false),
        (
            "bad request",
            &server.addr,
            "/api/search?q=".into(),
            400,
            false,
        ),
        ("misdirected", &foreign, "/api/info".into(), 421, false),
    ];
    for (what, host, path, status, is_image) in cases {
        let r = server.request_with_host(Some(host), "GET", &path, &[], b"");
        assert_eq!(r.status, status, "{what}: {}", brief(&r));
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
        if is_image {
            assert_eq!(
                r.header("cross-origin-resource-policy"),
                Some("same-origin"),
                "{what}"
            );
        }
    }
    let page = server.get("/");
    let csp = page
        .header("content-security-policy")
        .expect("the page has a Content-Security-Policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let script = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src "))
        .unwrap_or_else(|| panic!("no script-src: {csp}"));
    assert!(script.contains("'sha256-"), "{script}");
    assert!(!script.contains("unsafe-inline"), "{script}");
}

// --- M. The token ---------------------------------------------------------------------

#[test]
fn the_token_works_encoded_as_a_header_and_as_a_cookie_and_stays_off_the_command_line() {
    const TOKEN: &str = "a+b/c=d%e";
    const ENCODED: &str = "a%2Bb%2Fc%3Dd%25e";
    let c = Collection::indexed();
    let server = c.serve_with_env(&[], &[("QSEEK_TOKEN", TOKEN)]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(TOKEN),
        "the token is on the command line"
    );

    let bearer = format!("Bearer {TOKEN}");
    // (what, path, headers, status)
    let cases: Vec<(&str, String, Headers, u16)> = vec![
        ("no token", "/api/health".into(), vec![], 401),
        (
            "encoded query token",
            format!("/api/health?token={ENCODED}"),
            vec![],
            200,
        ),
        (
            "part of the token",
            "/api/health?token=a%2Bb".into(),
            vec![],
            401,
        ),
        (
            "header token",
            "/api/health".into(),
            headers(&[("Authorization", bearer.as_str())]),
            200,
        ),
        (
            "wrong header token",
            "/api/health".into(),
            headers(&[("Authorization", "Bearer a+b")]),
            401,
        ),
    ];
    for (what, path, hs, status) in &cases {
        let r = send(&server, Some(&server.addr), "GET", path, hs, b"");
        assert_eq!(r.status, *status, "{what}: {}", brief(&r));
    }

    // The page's first load trades the token for a cookie, and leaves the address bar.
    let r = server.get(&format!("/?token={ENCODED}"));
    assert_eq!(r.status, 303, "{}", brief(&r));
    assert_eq!(r.header("location"), Some("/"));
    let set_cookie = r.header("set-cookie").expect("a Set-Cookie").to_string();
    let attributes = set_cookie.to_ascii_lowercase();
    assert!(attributes.contains("httponly"), "{set_cookie}");
    assert!(attributes.contains("samesite=strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().trim().to_string();
    let (name, _) = cookie.split_once('=').expect("name=value");
    let wrong = format!("{name}=nope");
    for (path, cookie, status) in [
        ("/", &cookie, 200),
        ("/api/info", &cookie, 200),
        ("/api/info", &wrong, 401),
        ("/", &wrong, 401),
    ] {
        let r = server.request("GET", path, &[("Cookie", cookie)], b"");
        assert_eq!(r.status, status, "{path} with {cookie}: {}", brief(&r));
    }
    // A reload of the token's address, the cookie already set, still leaves it (and
    // keeps the rest of the query).
    let reload = format!("/?q=cat&token={ENCODED}");
    let r = server.request("GET", &reload, &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 303, "{}", brief(&r));
    assert_eq!(r.header("location"), Some("/?q=cat"));
}
