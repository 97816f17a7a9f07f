//! `qseek serve` over real HTTP: the binary on a free local port, the tiny fixture model,
//! real photos. Every endpoint answers as the CLI does; bad input gets a 4xx JSON error;
//! no request reads a byte outside the indexed files; searches go on while indexing.

mod common;

use std::time::{Duration, Instant};

use common::collection::Collection;
use common::server::{encode, index_body, multipart};
use common::{arg, fixtures, many_photos, stderr};
use serde_json::Value;

/// Request headers of a table row.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// (what, method, path, headers, body, expected status).
type Case<'a> = (&'a str, &'a str, String, Headers<'a>, Vec<u8>, u16);

/// A marker no served byte may contain: it is in a file beside the photos, never indexed.
const SECRET: &str = "qseek-test-secret-7f3a9c";

/// The fixture photos indexed with their vision features, the fixture captions as
/// texts, and a secret file beside the photos.
fn collection() -> Collection {
    let c = Collection::with_photos();
    std::fs::write(c.path("secret.txt"), SECRET).unwrap();
    c.index(&[&c.photos], &["--store-vision-features"]);
    c.add_fixture_texts();
    c
}

/// The (path or text, score) pairs of a search document, and checks every image result
/// carries its id and URLs.
fn ranked(doc: &Value) -> Vec<(String, f64)> {
    doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let what = r["path"].as_str().or(r["text"].as_str()).unwrap();
            (what.to_string(), r["score"].as_f64().unwrap())
        })
        .collect()
}

fn assert_same(served: &Value, cli: &Value, what: &str) {
    let (a, b) = (ranked(served), ranked(cli));
    assert_eq!(a.len(), b.len(), "{what}: {served} vs {cli}");
    for ((pa, sa), (pb, sb)) in a.iter().zip(&b) {
        assert_eq!(pa, pb, "{what}: {served} vs {cli}");
        assert!((sa - sb).abs() < 1e-4, "{what}: {sa} vs {sb}");
    }
    assert_eq!(served["query"]["mode"], cli["query"]["mode"], "{what}");
    assert_eq!(served["query"]["rerank"], cli["query"]["rerank"], "{what}");
}

#[test]
fn every_endpoint_answers_as_the_cli_does() {
    let c = collection();
    // The CLI's answers first: while the server runs, it owns the index.
    let (q, qe) = ("a cup of coffee", encode("a cup of coffee"));
    let under = c.photo("");
    let text_cases = [
        (
            format!("/api/search?q={qe}&k=5"),
            vec!["search", q, "-k", "5"],
        ),
        (
            format!("/api/search?q={qe}&k=3&rerank=0"),
            vec!["search", q, "-k", "3", "--rerank", "0"],
        ),
        (
            format!(
                "/api/search?q={qe}&min_prob=0.0001&under={}",
                encode(&under)
            ),
            vec!["search", q, "--min-prob", "0.0001", "--under", &under],
        ),
        (
            format!("/api/search?q={qe}&k=3&undated=true&sort=date"),
            vec!["search", q, "-k", "3", "--undated", "--sort", "date"],
        ),
        (
            format!(
                "/api/search?q={qe}&after=2020&camera=canon&near={}",
                encode("48.8,2.3,50")
            ),
            vec![
                "search",
                q,
                "--after",
                "2020",
                "--camera",
                "canon",
                "--near",
                "48.8,2.3,50",
            ],
        ),
        (
            format!(
                "/api/search?q={qe}&also={}&not={}&not_prob=0.9&k=4",
                encode("2:a cat"),
                encode("a rocket")
            ),
            vec![
                "search",
                q,
                "--also",
                "2:a cat",
                "--not",
                "a rocket",
                "--not-prob",
                "0.9",
                "-k",
                "4",
            ],
        ),
    ]
    .map(|(api, mut cli)| {
        cli.push("--json");
        (api, c.run_json(&cli))
    });
    let photo = c.photo("coffee.png");
    let image_cases = [false, true].map(|texts| {
        let mut cli = vec!["search", "--image", &photo, "-k", "4", "--json"];
        if texts {
            cli.push("--texts");
        }
        (texts, c.run_json(&cli))
    });
    // Near-duplicates at a low threshold (random weights: any groups will do), in pages.
    let dups_cases = [("0", "2"), ("2", "5")].map(|(offset, limit)| {
        let cli = [
            "dups",
            "--threshold",
            "0.5",
            "--offset",
            offset,
            "--limit",
            limit,
            "--json",
        ];
        (
            format!("/api/duplicates?threshold=0.5&offset={offset}&limit={limit}&scores=true"),
            c.run_json(&[&cli[..], &["--show-scores"]].concat()),
        )
    });
    let cli_info = c.run_json(&["info", "--json"]);
    let cli_texts: Vec<Value> = String::from_utf8_lossy(&c.run(&["texts", "list"]).stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let server = c.serve(&[]);
    assert_eq!(server.get_json("/api/health")["status"], "ok");
    let info = server.get_json("/api/info");
    assert_eq!(
        (&info["images"], &info["texts"]),
        (&cli_info["images"], &cli_info["texts"])
    );

    // text → images, with the default rerank (16: features are stored), without, and
    // with a probability threshold and a folder filter.
    for (api, expected) in &text_cases {
        assert_same(&server.get_json(api), expected, api);
    }
    // The same combined query as JSON.
    let body = serde_json::json!({
        "terms": [{"text": q}, {"text": "a cat", "weight": 2}],
        "not": ["a rocket"], "not_prob": 0.9, "k": 4
    });
    let reply = server.request(
        "POST",
        "/api/search",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_same(&reply.json(), &text_cases[5].1, "POST /api/search");
    assert_eq!(
        reply.json()["query"]["not"],
        serde_json::json!(["a rocket"])
    );
    // Photos like a photo and a sentence: `like=` with the photo's id.
    let like = server.get_json(&format!("/api/search?q={}&like=1&k=3", encode("at night")));
    assert_eq!(like["query"]["terms"][1]["image_id"], 1, "{like}");
    assert!(like["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["image_id"] != 1));

    // Paging: offset 2, k 2 is results 3 and 4 of k 4, ranks included.
    let all = server.get_json(&format!("/api/search?q={qe}&k=4"));
    let page = server.get_json(&format!("/api/search?q={qe}&k=2&offset=2"));
    assert_eq!(
        page["results"].as_array().unwrap()[..],
        all["results"].as_array().unwrap()[2..]
    );

    // Every image result carries its id and URLs; they serve the file and a JPEG thumbnail.
    let first = &all["results"][0];
    let id = first["image_id"].as_u64().unwrap();
    assert_eq!(first["image_url"], format!("/api/images/{id}"));
    let image = server.get(first["image_url"].as_str().unwrap());
    assert_eq!(image.status, 200);
    assert_eq!(
        image.body,
        std::fs::read(first["path"].as_str().unwrap()).unwrap()
    );
    for _ in 0..2 {
        // Made, then from the cache.
        let thumb = server.get(first["thumbnail_url"].as_str().unwrap());
        assert_eq!(
            (thumb.status, thumb.content_type.as_str()),
            (200, "image/jpeg")
        );
        let img = image::load_from_memory(&thumb.body).unwrap();
        assert!(
            img.width().max(img.height()) <= 320,
            "{}x{}",
            img.width(),
            img.height()
        );
    }
    assert_eq!(
        std::fs::read_dir(c.index.join("thumbnails"))
            .unwrap()
            .count(),
        1
    );

    // image → images and image → texts: by id, raw body, multipart; same as the CLI's.
    let bytes = std::fs::read(&photo).unwrap();
    let coffee_id = server.get_json(&format!("/api/search?q={qe}&k=7"))["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == photo.as_str())
        .unwrap()["image_id"]
        .as_u64()
        .unwrap();
    let (form_type, form) = multipart(&bytes);
    for (texts, expected) in &image_cases {
        let t = if *texts { "&texts=true" } else { "" };
        let by_id = server.get_json(&format!("/api/search/image?id={coffee_id}&k=4{t}"));
        assert_same(&by_id, expected, "by id");
        let path = format!("/api/search/image?k=4{t}");
        let raw = server.request("POST", &path, &[("Content-Type", "image/png")], &bytes);
        assert_eq!(raw.status, 200, "{}", raw.text());
        assert_same(&raw.json(), expected, "raw upload");
        let multi = server.request("POST", &path, &[("Content-Type", &form_type)], &form);
        assert_eq!(multi.status, 200, "{}", multi.text());
        assert_same(&multi.json(), expected, "multipart upload");
    }

    // Near-duplicates: the CLI's groups, each photo with its URLs.
    for (api, expected) in &dups_cases {
        let mut got = server.get_json(api);
        for member in got["groups"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .flat_map(|g| g["members"].as_array_mut().unwrap())
        {
            let id = member["image_id"].as_u64().unwrap();
            let m = member.as_object_mut().unwrap();
            assert_eq!(m.remove("image_url").unwrap(), format!("/api/images/{id}"));
            let thumb = m.remove("thumbnail_url").unwrap();
            assert_eq!(thumb, format!("/api/images/{id}/thumbnail"));
        }
        assert_eq!(&got, expected, "{api}");
    }
    assert!(dups_cases[0].1["scores"]["bins"].is_array());

    // Texts: listed as the CLI lists them; added.
    assert_eq!(
        server.get_json("/api/texts")["texts"].as_array().unwrap(),
        &cli_texts
    );
    let added = server.request(
        "POST",
        "/api/texts",
        &[("Content-Type", "application/json")],
        br#"{"texts": [{"id": "new", "text": "a red rocket"}, {"text": "a grey coin"}]}"#,
    );
    assert_eq!(added.status, 200, "{}", added.text());
    assert_eq!(added.json()["added"], 2);
    assert_eq!(
        server.get_json("/api/texts")["texts"]
            .as_array()
            .unwrap()
            .len(),
        cli_texts.len() + 2
    );

    // The web page: one document, everything inline, nothing fetched from elsewhere. Its
    // one address elsewhere is the map link of a photo's place, followed only on a click
    // (tests/browser.rs checks that no request leaves the server).
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    let text = page.text();
    assert!(!text.contains("http://"));
    let elsewhere: Vec<&str> = text
        .match_indices("https://")
        .map(|(i, _)| &text[i..i + 30])
        .collect();
    assert!(
        elsewhere
            .iter()
            .all(|a| a.starts_with("https://www.openstreetmap.org/")),
        "{elsewhere:?}"
    );
}

#[test]
fn bad_input_gets_a_4xx_json_error_and_no_byte_outside_the_index() {
    let c = collection();
    let server = c.serve(&["--max-upload-mb", "1", "--allow", &c.photo("")]);
    let images = fixtures().join("images");
    let read = |name: &str| std::fs::read(images.join(name)).unwrap();
    let long = "a".repeat(1001);
    let secret = arg(&c.path("secret.txt"));
    let json = [("Content-Type", "application/json")];
    let cases: Vec<Case> = vec![
        (
            "empty query",
            "GET",
            "/api/search?q=".into(),
            &[],
            vec![],
            400,
        ),
        (
            "blank query",
            "GET",
            "/api/search?q=%20...%20".into(),
            &[],
            vec![],
            400,
        ),
        (
            "over-long query",
            "GET",
            format!("/api/search?q={long}"),
            &[],
            vec![],
            400,
        ),
        (
            "a threshold above 1",
            "GET",
            "/api/duplicates?threshold=1.5".into(),
            &[],
            vec![],
            400,
        ),
        (
            "a threshold that is not a number",
            "GET",
            "/api/duplicates?threshold=high".into(),
            &[],
            vec![],
            400,
        ),
        (
            "no duplicate groups wanted",
            "GET",
            "/api/duplicates?limit=0".into(),
            &[],
            vec![],
            400,
        ),
        (
            "a date that does not exist",
            "GET",
            "/api/search?q=cat&after=2023-02-30".into(),
            &[],
            vec![],
            400,
        ),
        (
            "a place off the globe",
            "GET",
            "/api/search?q=cat&near=0,181".into(),
            &[],
            vec![],
            400,
        ),
        (
            "an unknown sort",
            "GET",
            "/api/search?q=cat&sort=size".into(),
            &[],
            vec![],
            400,
        ),
        (
            "more terms than a search takes",
            "GET",
            format!("/api/search?q=cat{}", "&also=dog".repeat(8)),
            &[],
            vec![],
            400,
        ),
        (
            "more ITM passes than a search takes (rerank 256 × 2 sentences)",
            "GET",
            "/api/search?q=cat&not=dog&rerank=256".into(),
            &[],
            vec![],
            400,
        ),
        (
            "a like that is not an id",
            "GET",
            "/api/search?q=cat&like=..%2Fsecret.txt".into(),
            &[],
            vec![],
            400,
        ),
        (
            "a JSON search with a term both text and photo",
            "POST",
            "/api/search".into(),
            &json,
            br#"{"terms":[{"text":"cat","image_id":1}]}"#.to_vec(),
            400,
        ),
        (
            "a JSON search with only negative terms",
            "POST",
            "/api/search".into(),
            &json,
            br#"{"terms":[{"text":"cat","weight":-1}]}"#.to_vec(),
            400,
        ),
        (
            "k zero",
            "GET",
            "/api/search?q=cat&k=0".into(),
            &[],
            vec![],
            400,
        ),
        (
            "k not a number",
            "GET",
            "/api/search?q=cat&k=ten".into(),
            &[],
            vec![],
            400,
        ),
        (
            "min_prob over 1",
            "GET",
            "/api/search?q=cat&min_prob=2".into(),
            &[],
            vec![],
            400,
        ),
        (
            "min_prob without rerank",
            "GET",
            "/api/search?q=cat&rerank=0&min_prob=0.5".into(),
            &[],
            vec![],
            400,
        ),
        (
            "unknown image id",
            "GET",
            "/api/search/image?id=999999".into(),
            &[],
            vec![],
            404,
        ),
        (
            "image id not a number",
            "GET",
            "/api/search/image?id=..%2F..%2Fetc%2Fpasswd".into(),
            &[],
            vec![],
            400,
        ),
        (
            "no image id",
            "GET",
            "/api/search/image".into(),
            &[],
            vec![],
            400,
        ),
        (
            "empty upload",
            "POST",
            "/api/search/image".into(),
            &[],
            vec![],
            400,
        ),
        (
            "not an image",
            "POST",
            "/api/search/image".into(),
            &[],
            read("text.jpg"),
            415,
        ),
        (
            "truncated image",
            "POST",
            "/api/search/image".into(),
            &[],
            read("truncated.jpg"),
            415,
        ),
        (
            "decompression bomb",
            "POST",
            "/api/search/image".into(),
            &[],
            read("bomb.png"),
            413,
        ),
        (
            "upload over the limit",
            "POST",
            "/api/search/image".into(),
            &[],
            vec![0xFF; 1_200_000],
            413,
        ),
        (
            "multipart without a file",
            "POST",
            "/api/search/image".into(),
            &[("Content-Type", "multipart/form-data; boundary=x")],
            b"--x--\r\n".to_vec(),
            400,
        ),
        (
            "unknown image",
            "GET",
            "/api/images/999999".into(),
            &[],
            vec![],
            404,
        ),
        (
            "unknown thumbnail",
            "GET",
            "/api/images/999999/thumbnail".into(),
            &[],
            vec![],
            404,
        ),
        (
            "traversal in the id",
            "GET",
            "/api/images/..%2F..%2F..%2Fetc%2Fpasswd".into(),
            &[],
            vec![],
            400,
        ),
        (
            "double-encoded traversal",
            "GET",
            "/api/images/%252e%252e%252fsecret.txt".into(),
            &[],
            vec![],
            400,
        ),
        (
            "dot segments",
            "GET",
            "/api/images/../../../../etc/passwd".into(),
            &[],
            vec![],
            404,
        ),
        (
            "encoded dot segments",
            "GET",
            "/%2e%2e/%2e%2e/etc/passwd".into(),
            &[],
            vec![],
            404,
        ),
        (
            "absolute path as id",
            "GET",
            format!("/api/images/{}", encode(&secret)),
            &[],
            vec![],
            400,
        ),
        (
            "path after a thumbnail",
            "GET",
            "/api/images/1/thumbnail/../../../secret.txt".into(),
            &[],
            vec![],
            404,
        ),
        (
            "a static-looking path",
            "GET",
            "/static/..%2f..%2fsecret.txt".into(),
            &[],
            vec![],
            404,
        ),
        (
            "unknown route",
            "GET",
            "/api/nothing".into(),
            &[],
            vec![],
            404,
        ),
        (
            "texts: bad JSON",
            "POST",
            "/api/texts".into(),
            &json,
            b"{".to_vec(),
            400,
        ),
        (
            "texts: empty text",
            "POST",
            "/api/texts".into(),
            &json,
            br#"{"texts": [{"text": " . "}]}"#.to_vec(),
            400,
        ),
        (
            "texts: none",
            "POST",
            "/api/texts".into(),
            &json,
            br#"{"texts": []}"#.to_vec(),
            400,
        ),
        (
            "index: outside --allow",
            "POST",
            "/api/index".into(),
            &json,
            index_body("/etc"),
            400,
        ),
        (
            "index: up from an allowed folder",
            "POST",
            "/api/index".into(),
            &json,
            index_body(format!("{}/..", c.photo(""))),
            400,
        ),
        (
            "index: relative folder",
            "POST",
            "/api/index".into(),
            &json,
            index_body("photos"),
            400,
        ),
        (
            // The same 400 as a folder that exists but is not allowed: no oracle.
            "index: no such folder",
            "POST",
            "/api/index".into(),
            &json,
            index_body("/nonexistent/photos"),
            400,
        ),
        (
            "index: no body",
            "POST",
            "/api/index".into(),
            &[],
            vec![],
            400,
        ),
    ];
    for (what, method, path, headers, body, status) in cases {
        let r = server.request(method, &path, headers, &body);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert!(
            r.content_type.starts_with("application/json"),
            "{what}: {}",
            r.content_type
        );
        let doc = r.json();
        assert!(
            doc["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {doc}"
        );
        assert!(
            !r.text().contains(SECRET) && !r.text().contains("root:"),
            "{what}: {}",
            r.text()
        );
    }
    // The server is still up, and a filter outside the collection finds nothing.
    let doc = server.get_json(&format!("/api/search?q=cat&under={}", encode(&secret)));
    assert_eq!(doc["results"].as_array().unwrap().len(), 0);
}

#[test]
fn a_token_guards_every_route_and_is_required_beyond_localhost() {
    let c = collection();
    let out = c.run(&["serve", "--addr", "0.0.0.0:0", "-q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--token"), "{}", stderr(&out));

    let server = c.serve(&["--token", "s3cret"]);
    // (what, path, headers, status)
    let cases: &[(&str, &str, Headers, u16)] = &[
        ("no token", "/api/health", &[], 401),
        ("no token, page", "/", &[], 401),
        ("no token, image", "/api/images/0", &[], 401),
        (
            "wrong token",
            "/api/health",
            &[("Authorization", "Bearer nope")],
            401,
        ),
        ("wrong query token", "/api/health?token=s3cre", &[], 401),
        (
            "header token",
            "/api/health",
            &[("Authorization", "Bearer s3cret")],
            200,
        ),
        ("query token", "/api/info?token=s3cret", &[], 200),
        // The page's token becomes a cookie, and leaves the address bar.
        ("page with token", "/?token=s3cret", &[], 303),
    ];
    for (what, path, headers, status) in cases {
        let r = server.request("GET", path, headers, b"");
        assert_eq!(r.status, *status, "{what}: {}", r.text());
    }
}

#[test]
fn searches_keep_answering_while_indexing_and_then_see_the_new_photos() {
    let c = collection();
    let new = c.path("new");
    let total = many_photos(&new, 6);
    let new_s = arg(&new);
    let server = c.serve(&["--allow", &new_s, "--commit-every", "0.2", "--batch", "2"]);
    let started = server.start_indexing(&new);
    assert_eq!(started.status, 202, "{}", started.text());
    let again = server.start_indexing(&new);
    assert_eq!(again.status, 409, "a second run at once: {}", again.text());

    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut searches, mut seen_growing) = (0, Vec::new());
    let status = loop {
        let doc = server.get_json("/api/search?q=a%20rocket&k=100&rerank=0");
        searches += 1;
        seen_growing.push(doc["results"].as_array().unwrap().len());
        let status = server.get_json("/api/index");
        if status["state"] != "running" {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "indexing did not finish: {status}"
        );
    };
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["done"], total);
    assert_eq!(status["failures"], 0);
    assert!(searches >= 2, "only {searches} searches during indexing");
    // Results only grow as commits land; at the end every photo is found.
    assert!(
        seen_growing.windows(2).all(|w| w[0] <= w[1]),
        "{seen_growing:?}"
    );
    let doc = server.get_json("/api/search?q=a%20rocket&k=100&rerank=0");
    assert_eq!(doc["results"].as_array().unwrap().len(), 7 + total);
    let info = server.get_json("/api/info");
    assert_eq!(info["images"], 7 + total);
}

#[test]
fn a_cancelled_run_keeps_what_it_committed_and_a_new_run_finishes_it() {
    let c = collection();
    let new = c.path("new");
    let total = many_photos(&new, 8);
    let new_s = arg(&new);
    let server = c.serve(&["--allow", &new_s, "--batch", "2"]);
    let start = || server.start_indexing(&new);
    let wait = || server.wait_for_indexing(Duration::from_secs(300), Duration::from_millis(20));
    assert_eq!(start().status, 202);
    // Cancel as soon as the run has made some progress.
    let deadline = Instant::now() + Duration::from_secs(300);
    while server.get_json("/api/index")["done"].as_u64().unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let cancel = server.request("DELETE", "/api/index", &[], b"");
    assert_eq!(cancel.status, 200, "{}", cancel.text());
    let status = wait();
    assert_eq!(status["state"], "cancelled", "{status}");
    let done = status["done"].as_u64().unwrap() as usize;
    assert!(done < total, "cancelled after the end: {status}");
    // What the run handled before it stopped is committed and searchable.
    assert_eq!(server.get_json("/api/info")["images"], 7 + done);
    let doc = server.get_json("/api/search?q=a%20rocket&k=1000&rerank=0");
    assert_eq!(doc["results"].as_array().unwrap().len(), 7 + done);
    // A new run over the same folder indexes the rest.
    assert_eq!(start().status, 202);
    let status = wait();
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(server.get_json("/api/info")["images"], 7 + total);
}
