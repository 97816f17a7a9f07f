//! `qseek export --to` and `qseek search --engine` against a real Milvus engine:
//! milvus-lite 2.5.1's server (Milvus's C++ segment engine, knowhere, behind Milvus's
//! gRPC API), started here as its own process on a free port. `.ci/run` installs it
//! (`scripts/milvus-lite.sh`) and sets `QSEEK_MILVUS_LITE`; without it these tests say
//! they skipped (`.ci/run` reports a failed install).
//!
//! Parity: the engine's candidates and ITC scores against qseek's exact local search
//! over the same index, before and after the ITM rerank, for text → images and
//! image → texts; image → images (Chamfer, scored in qseek on the engine's vectors)
//! against the local exact ranking; the folder and photo filters (date, camera, place,
//! undated) against the local filters, and an export made before the photo columns
//! refusing the latter; and `qseek serve --engine` against `qseek search --engine`.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::collection::Collection;
use common::server::{encode, Server};
use common::{arg, fixture_photos, many_photos, qseek, stderr};
use serde_json::Value;

/// A milvus-lite server on a free port, killed on drop.
struct Milvus {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Milvus {
    /// Starts the server, or `None` (with a note) when this machine has none.
    fn start() -> Option<Milvus> {
        let Some(lib) = std::env::var_os("QSEEK_MILVUS_LITE").map(PathBuf::from) else {
            // .ci/run installs it and stops when it cannot: under CI a missing engine
            // fails, never passes silently.
            assert!(
                std::env::var_os("CI").is_none(),
                "no milvus-lite under CI: export QSEEK_MILVUS_LITE=$(scripts/milvus-lite.sh)"
            );
            eprintln!(
                "SKIPPED: no milvus-lite (export QSEEK_MILVUS_LITE=$(scripts/milvus-lite.sh))"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = tempfile::tempdir().unwrap();
        let child = Command::new(lib.join("milvus"))
            .arg(data.path().join("engine.db"))
            .arg(format!("127.0.0.1:{port}"))
            .arg("ERROR")
            .env("LD_LIBRARY_PATH", &lib)
            .current_dir(data.path())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", lib.join("milvus").display()));
        let mut m = Milvus {
            child,
            port,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                m.child.try_wait().unwrap().is_none(),
                "milvus-lite exited at start"
            );
            assert!(Instant::now() < deadline, "milvus-lite did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(m)
    }

    fn uri(&self, collection: &str) -> String {
        format!("milvus://127.0.0.1:{}/{collection}", self.port)
    }
}

impl Drop for Milvus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The 7 fixture photos (byte-identical variants would tie, and ties may come back in
/// any order) indexed with the tiny model, stored vision features, and the fixture
/// captions as texts.
fn indexed() -> Collection {
    indexed_of(|photos| assert_eq!(many_photos(photos, 1), 7))
}

/// [`indexed`] with the photos `make` writes into the (empty) photo folder.
fn indexed_of(make: impl FnOnce(&Path)) -> Collection {
    let c = Collection::empty();
    make(&c.photos);
    c.index(&[&c.photos], &["--store-vision-features"]);
    c.add_fixture_texts();
    c
}

/// This file's commands on the fixture collection.
impl Collection {
    /// `qseek ARGS` on the index alone, then through the engine at `uri` (`--engine`):
    /// both JSON answers.
    fn local_and_engine(&self, args: &[&str], uri: &str) -> (Value, Value) {
        let local = self.run_json(args);
        let engine = self.run_json(&[args, &["--engine", uri]].concat());
        (local, engine)
    }

    fn export(&self, uri: &str) -> Value {
        self.run_json(&["export", "--to", uri, "--json"])
    }

    fn export_replace(&self, uri: &str) -> Value {
        self.run_json(&["export", "--to", uri, "--replace", "--json"])
    }
}

/// (what identifies the result, its ITC, its ITM logit) of a search response.
fn results(v: &Value) -> Vec<(String, f64, Option<f64>)> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let what = h["path"].as_str().or(h["text"].as_str()).unwrap();
            (
                what.to_string(),
                h["itc"].as_f64().unwrap(),
                h["itm_logit"].as_f64(),
            )
        })
        .collect()
}

/// The same results in the same order, ITC within 1e-5 and ITM logits within 1e-4.
fn assert_same(local: &Value, engine: &Value, what: &str) {
    let (l, e) = (results(local), results(engine));
    assert!(!l.is_empty(), "{what}: no results");
    let names =
        |r: &[(String, f64, Option<f64>)]| r.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&l), names(&e), "{what}: results or order differ");
    for (a, b) in l.iter().zip(&e) {
        assert!(
            (a.1 - b.1).abs() <= 1e-5,
            "{what}: {}: ITC {} vs {}",
            a.0,
            a.1,
            b.1
        );
        match (a.2, b.2) {
            (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-4, "{what}: {}: ITM {x} vs {y}", a.0),
            (None, None) => {}
            other => panic!("{what}: {}: reranked on one side only: {other:?}", a.0),
        }
    }
}

const SENTENCES: &[&str] = &[
    "a cup of coffee on a table",
    "a rocket launching into the sky",
    "a cat",
    "old coins",
    "galaxies in deep space",
];

#[test]
fn text_to_images_through_the_engine_matches_the_exact_local_search() {
    let Some(milvus) = Milvus::start() else {
        return;
    };
    let c = indexed();
    let uri = milvus.uri("photos");
    let report = c.export(&uri);
    assert_eq!(report["images"], 7);
    assert_eq!(report["image_rows"].as_u64().unwrap() % 7, 0);
    assert!(report["texts"].as_u64().unwrap() > 0);
    for sentence in SENTENCES {
        // ITC only: the top 5 of 7, then every image (the whole ranking).
        for k in ["5", "7"] {
            let args = ["search", sentence, "-k", k, "--rerank", "0", "--json"];
            let (local, engine) = c.local_and_engine(&args, &uri);
            assert_same(&local, &engine, &format!("{sentence:?} top {k}, ITC"));
        }
        // Reranked: the top 8 candidates by ITM logit + ITC, from stored features.
        let args = ["search", sentence, "-k", "10", "--rerank", "8", "--json"];
        let (local, engine) = c.local_and_engine(&args, &uri);
        assert_same(&local, &engine, &format!("{sentence:?} reranked"));
    }
    // The same images exported again (as two machines exporting overlapping parts
    // would): rows twice, results once, since an image is its content hash.
    let again = c.run_json(&["export", "--to", &uri, "--append", "--json"]);
    assert_eq!(again["images"], 7);
    let args = ["search", SENTENCES[0], "-k", "7", "--rerank", "0", "--json"];
    let (local, engine) = c.local_and_engine(&args, &uri);
    assert_same(&local, &engine, "after --append of the same images");
}

#[test]
fn image_to_texts_through_the_engine_matches_the_exact_local_search() {
    let Some(milvus) = Milvus::start() else {
        return;
    };
    let c = indexed();
    let uri = milvus.uri("photos");
    c.export(&uri);
    for photo in ["0-coffee.png", "0-rocket.jpg", "0-chelsea.png"] {
        let image = c.photo(photo);
        for rerank in ["0", "4"] {
            let args = ["search", "--image", &image, "--texts", "-k", "5"];
            let args = [&args[..], &["--rerank", rerank, "--json"]].concat();
            let (local, engine) = c.local_and_engine(&args, &uri);
            assert_same(
                &local,
                &engine,
                &format!("{photo} → texts, rerank {rerank}"),
            );
        }
    }
}

#[test]
fn engine_refusals_say_whose_fault_they_are() {
    let Some(milvus) = Milvus::start() else {
        return;
    };
    let c = indexed();
    let uri = milvus.uri("photos");
    c.export(&uri);
    let fails = |args: &[&str], says: &str| {
        let out = c.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    };
    // The user's: an existing collection, a malformed URI, a search the engine lacks.
    fails(&["export", "--to", &uri], "--replace");
    assert_eq!(c.export_replace(&uri)["images"], 7);
    fails(
        &["export", "--to", "milvus://127.0.0.1/1photos"],
        "collection name",
    );
    fails(
        &["search", "a cat", "--engine", "qdrant://x/photos"],
        "milvus://",
    );
    fails(
        &["search", "a cat", "--engine", &milvus.uri("nothing_here")],
        "qseek export --to",
    );
    // Not the user's: an engine that does not answer.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fails(
        &[
            "search",
            "a cat",
            "--engine",
            &format!("milvus://127.0.0.1:{closed}/photos"),
        ],
        "connect",
    );
}

/// The same images in the same order, with the same ids and Chamfer similarities
/// within 1e-5.
fn assert_same_images(local: &Value, engine: &Value, what: &str) {
    let hits = |v: &Value| -> Vec<(String, Option<u64>, f64)> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["path"].as_str().unwrap().to_string(),
                    h["image_id"].as_u64(),
                    h["score"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (l, e) = (hits(local), hits(engine));
    assert!(!l.is_empty(), "{what}: no results");
    assert_eq!(
        l.iter().map(|h| (&h.0, h.1)).collect::<Vec<_>>(),
        e.iter().map(|h| (&h.0, h.1)).collect::<Vec<_>>(),
        "{what}: results or order differ"
    );
    for (a, b) in l.iter().zip(&e) {
        assert!(
            (a.2 - b.2).abs() <= 1e-5,
            "{what}: {}: {} vs {}",
            a.0,
            a.2,
            b.2
        );
    }
    assert_eq!(engine["query"]["mode"], "image_to_images", "{what}");
}

/// The 7 fixture photos, each also mirrored and upside down: 21 images whose pixels all
/// differ, more than the engine's first search depth (16) per query vector.
fn flipped_photos(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for p in fixture_photos() {
        let img = image::open(&p).unwrap();
        let stem = p.file_stem().unwrap().to_str().unwrap();
        img.save(dir.join(format!("{stem}.png"))).unwrap();
        img.fliph()
            .save(dir.join(format!("{stem}-mirrored.png")))
            .unwrap();
        img.flipv()
            .save(dir.join(format!("{stem}-upside-down.png")))
            .unwrap();
    }
}

#[test]
fn image_to_images_through_the_engine_matches_the_exact_local_search() {
    let Some(milvus) = Milvus::start() else {
        return;
    };
    let c = indexed_of(flipped_photos);
    let uri = milvus.uri("photos");
    assert_eq!(c.export(&uri)["images"], 21);
    let mut photos: Vec<PathBuf> = std::fs::read_dir(&c.photos)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    // Every third photo as the query (its own image is left out, as locally); the
    // top 1, 5, and all 20 others.
    for photo in photos.iter().step_by(3) {
        let image = photo.display().to_string();
        for k in ["1", "5", "20"] {
            let args = ["search", "--image", &image, "-k", k, "--json"];
            let (local, engine) = c.local_and_engine(&args, &uri);
            let what = format!("{} → images, top {k}", photo.display());
            assert_same_images(&local, &engine, &what);
            assert_eq!(engine["notes"], serde_json::json!([]), "{what}");
        }
    }
    // Bytes the collection does not hold, pixels it does: the photo they copy comes
    // first, at similarity 1.
    let copy = c.photos.parent().unwrap().join("copy.png");
    let mut bytes = std::fs::read(&photos[4]).unwrap();
    bytes.extend(b"not the same bytes");
    std::fs::write(&copy, bytes).unwrap();
    let args = [
        "search",
        "--image",
        copy.to_str().unwrap(),
        "-k",
        "5",
        "--json",
    ];
    let (local, engine) = c.local_and_engine(&args, &uri);
    assert_same_images(&local, &engine, "a copy of a photo");
    let first = &engine["results"][0];
    assert_eq!(first["path"], photos[4].display().to_string());
    assert!(
        (first["score"].as_f64().unwrap() - 1.0).abs() <= 1e-5,
        "{first}"
    );

    // What the union of the per-vector searches alone holds at the shallowest depth
    // (k + 1 images per query vector), against the exact top k (printed for the README).
    use qseek::engine::{connect, EngineUri};
    use qseek_index::{Index, SearchParams};
    let index = Index::open(&c.index, None).unwrap();
    let engine = connect(&EngineUri::parse(&uri).unwrap()).unwrap();
    let dim = index.manifest().dim;
    let exact = SearchParams {
        exact: true,
        ..SearchParams::default()
    };
    for k in [1, 5, 10] {
        let (mut found, mut total) = (0, 0);
        for image in index.export_images() {
            let best: Vec<String> = index
                .similar_images(&image.vectors, k + 1, &exact)
                .unwrap()
                .into_iter()
                .filter(|h| h.image_id != image.image_id)
                .take(k)
                .map(|h| index.image(h.image_id).unwrap().content_hash)
                .collect();
            let lists = engine
                .images_per_vector(&image.vectors, dim, k + 1, None)
                .unwrap();
            let union: std::collections::HashSet<&str> = lists
                .iter()
                .flatten()
                .map(|h| h.content_hash.as_str())
                .collect();
            found += best.iter().filter(|h| union.contains(h.as_str())).count();
            total += best.len();
        }
        eprintln!(
            "per-vector candidates, {} per query vector: recall@{k} {found}/{total} = {:.3}",
            k + 1,
            found as f64 / total as f64
        );
    }
}

/// Two folders: `a/` the 7 fixture photos, `b/` the same mirrored.
fn two_folders(dir: &Path) {
    assert_eq!(many_photos(&dir.join("a"), 1), 7);
    std::fs::create_dir_all(dir.join("b")).unwrap();
    for p in fixture_photos() {
        let stem = p.file_stem().unwrap().to_str().unwrap();
        let mirrored = image::open(&p).unwrap().fliph();
        mirrored
            .save(dir.join("b").join(format!("{stem}.png")))
            .unwrap();
    }
}

#[test]
fn under_through_the_engine_matches_the_local_filter() {
    let Some(milvus) = Milvus::start() else {
        return;
    };
    let c = indexed_of(two_folders);
    let uri = milvus.uri("photos");
    assert_eq!(c.export(&uri)["images"], 14);
    // A folder; a path prefix; a prefix holding `_`, a LIKE wildcard in Milvus's filter.
    for under in [c.photo("b"), c.photo("a/0-c"), c.photo("a/0-hubble_d")] {
        for sentence in &SENTENCES[..3] {
            for rerank in ["0", "4"] {
                let args = ["search", sentence, "-k", "5", "--rerank", rerank, "--json"];
                let args = [&args[..], &["--under", &under]].concat();
                let (local, engine) = c.local_and_engine(&args, &uri);
                assert_same(&local, &engine, &format!("{sentence:?} under {under}"));
                assert!(results(&engine).iter().all(|r| r.0.starts_with(&under)));
            }
        }
        let image = c.photo("b/coffee.png");
        let args = [
            "search", "--image", &image, "-k", "5", "--json", "--under", &under,
        ];
        let (local, engine) = c.local_and_engine(&args, &uri);
        let what = format!("coffee → images under {under}");
        if local["results"].as_array().unwrap().is_empty() {
            assert_eq!(engine["results"], local["results"], "{what}");
        } else {
            assert_same_images(&local, &engine, &what);
        }
    }
}

#[test]
fn serve_with_an_engine_answers_as_search_with_it() {
    let Some(milvus) = Milvus::start() else {
        return;
    };
    let c = indexed();
    let uri = milvus.uri("photos");
    c.export(&uri);
    // The CLI's answers first: while the server runs, it owns the index.
    let sentence = SENTENCES[0];
    let coffee = c.photos.join("0-coffee.png");
    let image = arg(&coffee);
    let engine = ["--engine", uri.as_str(), "--json"];
    let search = |args: &[&str]| c.run_json(&[args, &engine[..]].concat());
    let to_images = search(&["search", sentence, "-k", "5", "--rerank", "3"]);
    let to_texts = search(&[
        "search", "--image", &image, "--texts", "-k", "4", "--rerank", "2",
    ]);
    let like = search(&["search", "--image", &image, "-k", "4"]);
    let all = c.run_json(&["search", sentence, "-k", "7", "--rerank", "0", "--json"]);
    let id = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["path"] == image.as_str())
        .unwrap()["image_id"]
        .as_u64()
        .unwrap();

    // An engine that cannot be used stops the server before it listens.
    let index = arg(&c.index);
    let index = index.as_str();
    let serve = |engine: &str| {
        let out = qseek(&[
            "serve",
            "--index",
            index,
            "--addr",
            "127.0.0.1:0",
            "--engine",
            engine,
        ]);
        assert_eq!(out.status.code(), Some(2), "{engine}: {}", stderr(&out));
        stderr(&out)
    };
    assert!(serve("qdrant://x/photos").contains("milvus://"));
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(serve(&format!("milvus://127.0.0.1:{closed}/photos")).contains("connect"));
    assert!(serve(&milvus.uri("nothing_here")).contains("qseek export --to"));

    let server = Server::start(&[
        "serve",
        "--index",
        index,
        "--addr",
        "127.0.0.1:0",
        "-q",
        "--engine",
        &uri,
    ]);
    let served = server.get_json(&format!("/api/search?q={}&k=5&rerank=3", encode(sentence)));
    assert_same(&to_images, &served, "text → images, served");
    let served = server.get_json(&format!(
        "/api/search/image?id={id}&texts=true&k=4&rerank=2"
    ));
    assert_same(&to_texts, &served, "image → texts, served");
    let refused = server.get(&format!("/api/search?q={}&ann=true", encode(sentence)));
    assert_eq!(refused.status, 400, "{}", refused.text());
    let served = server.get_json(&format!("/api/search/image?id={id}&k=4"));
    assert_same_images(&like, &served, "image → images by id, served");
    let upload = std::fs::read(&coffee).unwrap();
    let reply = server.request(
        "POST",
        "/api/search/image?k=4",
        &[("Content-Type", "application/octet-stream")],
        &upload,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_same_images(&like, &reply.json(), "image → images uploaded, served");
}

/// Each fixture photo as a JPEG, as it is and mirrored (14 images, no two alike), with
/// EXIF: dates with and without their clock's offset, and none; cameras, one holding
/// LIKE's `%` and `_`, a quote and a backslash, one a `0%` filter must not match
/// unescaped (`500`); places around the Eiffel Tower (two within 50 km, four in the
/// corners of the box around that circle but outside it), beside the ±180° meridian on
/// both sides, elsewhere, and none.
fn photos_with_metadata(dir: &Path) {
    use common::exif::{jpeg_with_exif, Exif};
    const PARIS: (f64, f64) = (48.8584, 2.2945);
    let paris = |dlat: f64, dlon: f64| Some((PARIS.0 + dlat, PARIS.1 + dlon));
    let exif = |date, offset, make, model, gps| Exif {
        date,
        offset,
        make,
        model,
        gps,
    };
    let table: [Exif; 14] = [
        exif(
            Some("2023:06:14 10:00:00"),
            Some("+02:00"),
            Some("Canon"),
            Some("Canon EOS R5"),
            paris(0.1, 0.1),
        ),
        exif(
            Some("2023:06:14 08:30:00"),
            Some("+00:00"),
            Some("NIKON CORPORATION"),
            Some("NIKON D850"),
            paris(0.4, 0.6),
        ),
        exif(
            Some("2021:01:02 08:00:00"),
            None,
            Some("Apple"),
            Some("iPhone 15"),
            paris(-0.42, -0.62),
        ),
        exif(
            None,
            None,
            Some("Lab\\Cam"),
            Some("50%_\"Pro\""),
            paris(-0.2, 0.3),
        ),
        exif(
            Some("2023:12:31 23:59:59"),
            None,
            Some("Canon"),
            Some("EOS 500 X"),
            paris(0.43, -0.6),
        ),
        exif(
            Some("2023:06:14 06:00:00"),
            Some("-05:00"),
            None,
            None,
            paris(-0.4, 0.65),
        ),
        exif(None, None, None, None, None),
        exif(
            Some("2019:07:01 12:00:00"),
            Some("+09:00"),
            Some("FUJIFILM"),
            Some("X100V"),
            Some((35.6762, 139.6503)),
        ),
        exif(
            Some("2023:06:14 23:00:00"),
            None,
            Some("Apple"),
            Some("iPhone 12"),
            Some((-33.86, 151.21)),
        ),
        exif(None, None, Some("Canon"), None, Some((-16.52, 179.93))),
        exif(
            Some("2023:07:15 12:00:00"),
            Some("+02:00"),
            None,
            Some("X100V"),
            Some((-16.61, -179.93)),
        ),
        exif(
            Some("2024:01:01 00:00:00"),
            None,
            Some("Sony_A"),
            None,
            None,
        ),
        exif(Some("2023:06:14 10:00:00"), None, None, None, Some(PARIS)),
        exif(None, None, None, None, None),
    ];
    std::fs::create_dir_all(dir).unwrap();
    let images = fixture_photos().into_iter().flat_map(|p| {
        let img = image::open(&p).unwrap();
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        let mirrored = img.fliph();
        [
            (format!("{stem}.jpg"), img),
            (format!("{stem}-mirrored.jpg"), mirrored),
        ]
    });
    for ((name, img), exif) in images.zip(table) {
        let mut jpeg = Vec::new();
        img.to_rgb8()
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        std::fs::write(dir.join(name), jpeg_with_exif(&jpeg, &exif)).unwrap();
    }
}

/// [`assert_same`], where both may be empty.
fn assert_same_or_none(local: &Value, engine: &Value, what: &str) -> usize {
    if local["results"].as_array().unwrap().is_empty() {
        assert_eq!(engine["results"], local["results"], "{what}");
        0
    } else {
        assert_same(local, engine, what);
        local["results"].as_array().unwrap().len()
    }
}

#[test]
fn photo_filters_through_the_engine_match_the_local_filters() {
    let Some(milvus) = Milvus::start() else {
        return;
    };
    let c = indexed_of(photos_with_metadata);
    let uri = milvus.uri("photos");
    assert_eq!(c.export(&uri)["images"], 14);
    let info = c.run_json(&["info", "--json"]);
    assert_eq!(
        [
            &info["photos_dated"],
            &info["photos_with_camera"],
            &info["photos_with_place"]
        ],
        [10, 10, 11],
        "{info}"
    );
    let filters: &[&[&str]] = &[
        &["--after", "2023"],
        &["--after", "2023-06-14", "--before", "2023-06-14"],
        &["--before", "2022-12"],
        // Instants: compared with the photos that record their offset as instants.
        &[
            "--after",
            "2023-06-14T07:30:00Z",
            "--before",
            "2023-06-14T09:00:00+00:00",
        ],
        &["--after", "2023-06-14T10:00:00+02:00"],
        &["--before", "2023-06-14T10:00:00-01:00"],
        &["--undated"],
        &["--camera", "canon"],
        &["--camera", "IPHONE", "--after", "2023-07"],
        &["--camera", "50%_\"pro"],
        &["--camera", "0%"],
        &["--camera", "_"],
        &["--camera", "\\"],
        &["--camera", "x100v", "--before", "2023-08"],
        // Within 50 km: two of the six photos the box around the circle holds.
        &["--near", "48.8584,2.2945,50"],
        &["--near", "48.8584,2.2945"],
        // Across the ±180° meridian.
        &["--near", "-16.55,179.99,30"],
        // Tokyo in the box's corner, outside the circle.
        &["--near", "34.8762,138.6503,100"],
        // The whole Earth.
        &["--near", "0,0,30000"],
        &[
            "--near",
            "48.8584,2.2945,50",
            "--camera",
            "a",
            "--after",
            "2020",
        ],
        &["--near", "48.8584,2.2945,50", "--undated"],
    ];
    let mut found = 0;
    for flags in filters {
        for sentence in &SENTENCES[..3] {
            // Filters before the top k: the best one, then every one.
            for k in ["1", "14"] {
                let args = ["search", sentence, "-k", k, "--rerank", "0", "--json"];
                let args = [&args[..], flags].concat();
                let (local, engine) = c.local_and_engine(&args, &uri);
                let what = format!("{sentence:?} top {k} {flags:?}");
                found += assert_same_or_none(&local, &engine, &what);
                assert_eq!(engine["notes"], local["notes"], "{what}");
            }
        }
        let args = ["search", SENTENCES[0], "-k", "5", "--rerank", "4", "--json"];
        let (local, engine) = c.local_and_engine(&[&args[..], flags].concat(), &uri);
        assert_same_or_none(&local, &engine, &format!("reranked {flags:?}"));
        let image = c.photo("coffee.jpg");
        let args = ["search", "--image", &image, "-k", "3", "--json"];
        let (local, engine) = c.local_and_engine(&[&args[..], flags].concat(), &uri);
        let what = format!("coffee → images {flags:?}");
        if local["results"].as_array().unwrap().is_empty() {
            assert_eq!(engine["results"], local["results"], "{what}");
        } else {
            assert_same_images(&local, &engine, &what);
        }
    }
    assert!(
        found > 100,
        "{found} results in all: the filters keep too little"
    );
    // With a folder, and by date.
    for flags in [
        &["--under", &c.photo("c"), "--near", "48.8584,2.2945,50"][..],
        &["--sort", "date", "--after", "2020"],
    ] {
        let args = [
            "search",
            SENTENCES[1],
            "-k",
            "14",
            "--rerank",
            "0",
            "--json",
        ];
        let (local, engine) = c.local_and_engine(&[&args[..], flags].concat(), &uri);
        assert!(assert_same_or_none(&local, &engine, &format!("{flags:?}")) > 0);
    }
}

#[test]
fn an_export_made_before_photo_metadata_refuses_photo_filters_in_one_sentence() {
    let Some(milvus) = Milvus::start() else {
        return;
    };
    use qseek::engine::milvus::{ImageColumns, MilvusEngine};
    use qseek::engine::{EngineUri, ExportMode, VectorEngine};
    let c = Collection::with_metadata();
    c.index(&[&c.photos], &["--store-vision-features"]);
    let uri = milvus.uri("photos");
    let old_export = |mode| {
        let index = qseek_index::Index::open(&c.index, None).unwrap();
        let engine = MilvusEngine::connect(&EngineUri::parse(&uri).unwrap()).unwrap();
        engine
            .export_with(&index, mode, ImageColumns::BeforePhoto)
            .unwrap()
    };
    assert_eq!(old_export(ExportMode::Create).images, 7);
    let image = c.photo("rocket.jpg");
    let refused = |what: &str| {
        for flags in [
            &["--camera", "canon"][..],
            &["--after", "2023"],
            &["--near", "48.8584,2.2945"],
            &["--undated"],
        ] {
            for query in [&["a rocket"][..], &["--image", &image]] {
                let args = [&["search"][..], query, flags, &["--engine", &uri]].concat();
                let out = c.run(&args);
                let err = stderr(&out);
                assert_eq!(out.status.code(), Some(2), "{what} {args:?}: {err}");
                assert!(
                    err.contains("made before qseek exported photo metadata")
                        && err.contains(&format!("qseek export --to {uri} --replace")),
                    "{what} {args:?}: {err}"
                );
                assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
            }
        }
    };
    refused("an old export");
    // Without photo filters it answers as the index does.
    for args in [
        &["search", "a rocket", "-k", "7", "--rerank", "0", "--json"][..],
        &["search", "a rocket", "-k", "3", "--rerank", "2", "--json"],
        &[
            "search",
            "a rocket",
            "-k",
            "3",
            "--json",
            "--under",
            &c.photo("r"),
        ],
    ] {
        let (local, engine) = c.local_and_engine(args, &uri);
        assert_same(&local, &engine, &format!("{args:?} on an old export"));
    }
    let args = ["search", "--image", &image, "-k", "3", "--json"];
    let (local, engine) = c.local_and_engine(&args, &uri);
    assert_same_images(&local, &engine, "image → images on an old export");
    // Appending keeps the collection's columns: still old.
    assert_eq!(
        c.run_json(&["export", "--to", &uri, "--append", "--json"])["images"],
        7
    );
    refused("an old export appended to");
    // Exported again, it filters.
    assert_eq!(c.export_replace(&uri)["images"], 7);
    let args = ["search", "a rocket", "-k", "7", "--rerank", "0", "--json"];
    let (local, engine) = c.local_and_engine(&[&args[..], &["--camera", "canon"]].concat(), &uri);
    assert_eq!(assert_same_or_none(&local, &engine, "exported again"), 1);
    // An engine connection that saw the old collection sees the new one.
    let engine = MilvusEngine::connect(&EngineUri::parse(&uri).unwrap()).unwrap();
    old_export(ExportMode::Replace);
    let filter = qseek::engine::EngineFilter {
        under: None,
        photo: qseek_index::PhotoFilter {
            undated: true,
            ..Default::default()
        },
    };
    // A query: the first vector of the first image.
    let text = {
        let index = qseek_index::Index::open(&c.index, None).unwrap();
        let dim = index.manifest().dim;
        let first = index.export_images().next().unwrap();
        first.vectors[..dim].to_vec()
    };
    assert!(engine.search_images(&text, 3, Some(&filter)).is_err());
    c.export_replace(&uri);
    assert_eq!(
        engine.search_images(&text, 3, Some(&filter)).unwrap().len(),
        3
    );
}
