//! `qseek shard-embed` and `qseek import`, driven as a user would with the tiny
//! fixture model: shards imported make the index `qseek index` makes, bit for bit;
//! a shard of another model is refused; finished shards are not redone; an
//! interrupted one goes on from its parts.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::collection::Collection;
use common::{arg, fixtures, many_photos, model_dir, qseek, qseek_json, stderr, tiny};
use qseek_index::Index;
use serde_json::Value;

/// This file's commands on the fixture collection ([`Collection::with_photos`]), whose
/// temporary folder holds the shards and the indexes made here.
impl Collection {
    /// `qseek shard-embed INPUT --shard spec --out out` with the tiny model, one image
    /// per model call (see [`BATCH`]).
    fn shard(&self, input: &Path, spec: &str, out: &Path, extra: &[&str]) -> Value {
        self.shard_status(input, spec, out, extra, 0)
    }

    /// [`Collection::shard`], exiting with `status`.
    fn shard_status(
        &self,
        input: &Path,
        spec: &str,
        out: &Path,
        extra: &[&str],
        status: i32,
    ) -> Value {
        let args = shard_args(input, spec, out, extra);
        qseek_json(&args.iter().map(String::as_str).collect::<Vec<_>>(), status)
    }

    fn import(&self, shards: &[PathBuf], index: &Path) -> Value {
        let index = arg(index);
        let shards: Vec<String> = shards.iter().map(|p| arg(p)).collect();
        let mut args = vec!["import", "--index", &index, "-q", "--json"];
        args.extend(shards.iter().map(String::as_str));
        qseek_json(&args, 0)
    }

    /// `qseek index` of the photos into `index`: the reference.
    fn index_into(&self, index: &Path, extra: &[&str]) {
        self.index_into_status(index, extra, 0);
    }

    /// [`Collection::index_into`], exiting with `status`.
    fn index_into_status(&self, index: &Path, extra: &[&str], status: i32) {
        let (photos, index, tiny) = (arg(&self.photos), arg(index), tiny());
        let mut args = vec![
            "index", &photos, "--index", &index, "-m", &tiny, "-q", "--json", "--batch", BATCH,
        ];
        args.extend(extra);
        qseek_json(&args, status);
    }
}

/// The command line of `qseek shard-embed INPUT --shard spec --out out` with the tiny
/// model, one image per model call (see [`BATCH`]), JSON summary, and `extra`.
fn shard_args(input: &Path, spec: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let (input, out) = (arg(input), arg(out));
    let mut args: Vec<String> = [
        "shard-embed",
        &input,
        "--shard",
        spec,
        "--out",
        &out,
        "-m",
        &tiny(),
        "-q",
        "--json",
        "--batch",
        BATCH,
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Images per model call, in every run here. The CPU GEMM's blocking depends on the
/// batch's size, so one image embedded beside different others can differ in the last
/// bits; one image per call makes every run compute each image alike, so that what is
/// compared is what the shards carry, bit for bit.
const BATCH: &str = "1";

/// An index's images by content hash: (paths with size and mtime, width, height, vector
/// bits, vision feature bits and shape).
type Content = BTreeMap<
    String,
    (
        Vec<(String, u64, i64)>,
        u32,
        u32,
        Vec<u32>,
        Option<(Vec<u32>, Vec<usize>)>,
    ),
>;

fn content(dir: &Path) -> Content {
    let index = Index::open(dir, None).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    index
        .export_images()
        .map(|img| {
            let mut paths: Vec<_> = img
                .paths
                .iter()
                .map(|p| (p.path.clone(), p.size, p.mtime))
                .collect();
            paths.sort();
            let features = index
                .vision_features(img.image_id)
                .unwrap()
                .map(|(values, shape)| (bits(&values), shape));
            let value = (paths, img.width, img.height, bits(&img.vectors), features);
            (img.content_hash, value)
        })
        .collect()
}

/// Equal, or a panic naming the first image and field that differ.
fn assert_same(got: &Content, expected: &Content) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (hash, e) in expected {
        let g = &got[hash];
        assert_eq!(
            (&g.0, g.1, g.2),
            (&e.0, e.1, e.2),
            "{hash}: paths or dimensions"
        );
        let differ = g.3.iter().zip(&e.3).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{hash}: {differ} vector values differ");
        assert!(g.4 == e.4, "{hash}: vision features differ");
    }
}

#[test]
fn three_shards_imported_make_the_index_qseek_index_makes_bit_for_bit() {
    let w = Collection::with_photos();
    for features in [false, true] {
        let flags: &[&str] = if features { &["--features"] } else { &[] };
        let shards: Vec<PathBuf> = (0..3)
            .map(|i| w.path(&format!("f{features}-{i}.parquet")))
            .collect();
        let mut rows = 0;
        for (i, out) in shards.iter().enumerate() {
            let s = w.shard(&w.photos, &format!("{i}/3"), out, flags);
            assert_eq!(s["failed"], serde_json::json!([]), "{s}");
            rows += s["rows"].as_u64().unwrap();
        }
        assert_eq!(rows, 7, "each photo in exactly one shard");

        let imported = w.path(&format!("imported-{features}"));
        let s = w.import(&shards, &imported);
        assert_eq!(
            (s["added"].as_u64(), s["created"].as_bool()),
            (Some(7), Some(true)),
            "{s}"
        );
        let reference = w.path(&format!("reference-{features}"));
        w.index_into(
            &reference,
            if features {
                &["--store-vision-features"]
            } else {
                &[]
            },
        );
        let expected = content(&reference);
        assert_eq!(expected.len(), 7);
        assert_eq!(expected.values().all(|v| v.4.is_some()), features);
        assert_same(&content(&imported), &expected);

        // Again: nothing is added twice; a finished shard is not redone.
        let s = w.import(&shards, &imported);
        assert_eq!(
            (s["added"].as_u64(), s["unchanged"].as_u64()),
            (Some(0), Some(7)),
            "{s}"
        );
        assert!(
            content(&imported) == expected,
            "a second import changed the index"
        );
        let s = w.shard(&w.photos, "0/3", &shards[0], flags);
        assert_eq!(
            (s["already_complete"].as_bool(), s["embedded"].as_u64()),
            (Some(true), Some(0)),
            "{s}"
        );
    }
}

#[test]
fn an_interrupted_shard_goes_on_from_its_parts() {
    let w = Collection::with_photos();
    // What a crash leaves: one complete part (here: the first three photos, listed in a
    // file, as one shard) and a part that was being written.
    let mut names: Vec<String> = std::fs::read_dir(&w.photos)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let list = w.photos.join("first-three.txt");
    std::fs::write(
        &list,
        format!("{}\n\n{}\n", names[..2].join("\n"), names[2]),
    )
    .unwrap();
    let first = w.shard(&list, "0/1", &w.path("first.parquet"), &[]);
    assert_eq!(first["rows"], 3, "{first}");
    let out = w.path("all.parquet");
    let partial = w.path("all.parquet.partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::rename(w.path("first.parquet"), partial.join("part-000000.parquet")).unwrap();
    std::fs::write(partial.join("part-000001.parquet.tmp"), b"PAR1 torn").unwrap();
    std::fs::remove_file(&list).unwrap();
    // And files `qseek index` would skip or fail on: the same here.
    let truncated = fixtures().join("images/truncated.jpg");
    std::fs::copy(truncated, w.photos.join("cut.jpg")).unwrap();
    std::fs::write(w.photos.join("notes.txt"), b"not a photo").unwrap();

    let s = w.shard_status(&w.photos, "0/1", &out, &[], 1);
    let note = |key: &str| {
        let list = s[key].as_array().unwrap();
        assert_eq!(list.len(), 1, "{s}");
        (
            list[0]["path"].as_str().unwrap().to_string(),
            list[0]["reason"].as_str().unwrap().to_string(),
        )
    };
    let (failed, reason) = note("failed");
    assert!(
        failed.ends_with("cut.jpg") && reason.contains("truncated"),
        "{s}"
    );
    assert!(note("skipped").0.ends_with("notes.txt"), "{s}");
    assert_eq!(
        (
            s["resumed"].as_u64(),
            s["embedded"].as_u64(),
            s["rows"].as_u64()
        ),
        (Some(3), Some(4), Some(7)),
        "{s}"
    );
    assert!(!partial.exists(), "the parts are removed once merged");

    let (imported, reference) = (w.path("imported"), w.path("reference"));
    w.import(&[out], &imported);
    w.index_into_status(&reference, &[], 1);
    assert_same(&content(&imported), &content(&reference));
}

#[test]
fn a_shard_killed_mid_run_completes_on_the_next_run_without_redoing_work() {
    let w = Collection::with_photos();
    // Twice the photos, each copy with other bytes (a trailing pattern the decoders
    // ignore), so that the run lasts long enough to be killed.
    let copies = many_photos(&w.photos, 1);
    let total = (2 * copies) as u64;
    let (out, partial) = (w.path("s.parquet"), w.path("s.parquet.partial"));
    let args = shard_args(&w.photos, "0/1", &out, &["--commit-every", "0.001"]);
    let parts = || {
        std::fs::read_dir(&partial)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            .count()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qseek"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while parts() == 0 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = parts();
    assert!(
        !out.exists() && kept > 0,
        "the run finished before it was killed: nothing proved"
    );

    let s = qseek_json(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    let n = |k: &str| s[k].as_u64().unwrap();
    assert_eq!((n("files"), n("rows")), (total, total), "{s}");
    assert!(n("resumed") >= kept as u64, "{s}");
    assert_eq!(
        n("resumed") + n("embedded"),
        total,
        "each file embedded once: {s}"
    );
    assert!(!partial.exists());

    let (imported, reference) = (w.path("imported"), w.path("reference"));
    w.import(&[out], &imported);
    w.index_into(&reference, &[]);
    assert_same(&content(&imported), &content(&reference));
}

#[test]
fn shards_that_do_not_fit_are_refused_in_one_sentence() {
    let w = Collection::with_photos();
    let (tiny, odd) = (w.path("tiny.parquet"), w.path("odd.parquet"));
    w.shard(&w.photos, "0/2", &tiny, &[]);
    let (photos, odd_s, odd_model) = (arg(&w.photos), arg(&odd), arg(&model_dir("odd")));
    qseek_json(
        &[
            "shard-embed",
            &photos,
            "--shard",
            "1/2",
            "--out",
            &odd_s,
            "-m",
            &odd_model,
            "-q",
            "--json",
        ],
        0,
    );
    let index = w.path("index");
    let refuse = |files: &[&Path], index: &Path, expect: &str| {
        let index = arg(index);
        let mut args = vec!["import".to_string(), "--index".into(), index];
        args.extend(files.iter().map(|f| arg(f)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = qseek(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{err} lacks {expect:?}");
    };
    // Two models in one import: nothing is created.
    refuse(&[&tiny, &odd], &index, "made with model");
    assert!(!index.exists());
    // Another model than the index's.
    w.import(std::slice::from_ref(&tiny), &index);
    refuse(&[&odd], &index, "made with model");
    // Not a shard at all.
    let junk = w.path("junk.parquet");
    std::fs::write(&junk, b"not parquet").unwrap();
    refuse(&[&junk], &index, "not a qseek shard file");
    // No vision features for an index that stores them.
    let with_features = w.path("with-features");
    w.index_into(&with_features, &["--store-vision-features"]);
    refuse(&[&tiny], &with_features, "no vision features");
    // Features coarser than the index's (f16 for an index of f32 features).
    let half = w.path("half.parquet");
    w.shard(
        &w.photos,
        "0/2",
        &half,
        &["--features", "--feature-dtype", "f16"],
    );
    refuse(&[&half], &with_features, "holds f16 vision features");
    // A shard file made with other settings is not overwritten.
    let (photos, tiny_s, tiny_model) = (arg(&w.photos), arg(&tiny), common::tiny());
    let out = qseek(&[
        "shard-embed",
        &photos,
        "--shard",
        "1/2",
        "--out",
        &tiny_s,
        "-m",
        &tiny_model,
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another model, shard or settings"),
        "{}",
        stderr(&out)
    );
}
