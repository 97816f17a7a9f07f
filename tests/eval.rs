//! `qseek eval` against an independent reference: `tests/fixtures/make_eval_fixtures.py`
//! ran the transformers model and LAVIS's `compute_sim_matrix` / `_report_metrics`
//! formulas (numpy) on 8 photos × 3 captions (one photo stored sideways with an EXIF
//! orientation, one caption a duplicate of another photo's); its ranks and R@K are
//! committed.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use candle_core::{Device, Tensor};
use common::kernels::{kernel_sets, Axis};
use common::{dot, fixtures, json_rows, model_dir, qseek, stderr, tiny};
use qseek::embedder::ModelOptions;
use qseek::model::{ModelSource, Precision};
use qseek::pipeline::eval::{cache_index_dir, evaluate, load_dataset, EvalOptions};
use qseek::pipeline::indexer::IndexOptions;
use qseek::pipeline::walk::WalkOptions;
use qseek::pipeline::{Collection, CreateOptions};
use qseek::preprocess::image::LoadOptions;
use qseek_index::VectorDtype;
use qseek_kernels::gemm::Kernels;
use serde_json::Value;

/// Images and captions of the eval set.
const IMAGES: u64 = 8;
const TEXTS: u64 = 24;

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("eval/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn eval(cache: &Path, k_test: usize) -> Value {
    eval_with(cache, k_test, &[])
}

fn eval_with(cache: &Path, k_test: usize, extra: &[&str]) -> Value {
    let k = k_test.to_string();
    let mut args = vec!["--k-test", &k, "--json"];
    args.extend(extra);
    let out = eval_args(cache, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `qseek eval` on the fixture set with the tiny model, the cache folder and `extra`.
fn eval_args(cache: &Path, extra: &[&str]) -> std::process::Output {
    let (ann, images, tiny) = (
        fixtures().join("eval/annotations.json"),
        fixtures(),
        model_dir("tiny"),
    );
    let mut args = vec![
        "eval",
        "--annotations",
        ann.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "-m",
        tiny.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "-q",
    ];
    args.extend(extra);
    qseek(&args)
}

fn assert_metrics_equal(got: &Value, expected: &Value, what: &str) {
    for key in [
        "txt_r1",
        "txt_r5",
        "txt_r10",
        "txt_r_mean",
        "img_r1",
        "img_r5",
        "img_r10",
        "img_r_mean",
        "r_mean",
    ] {
        let (g, e) = (got[key].as_f64().unwrap(), expected[key].as_f64().unwrap());
        assert!((g - e).abs() < 1e-9, "{what} {key}: {g} vs reference {e}");
    }
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    json_rows(v, |x| x.as_f64().unwrap() as f32)
}

fn max_sim(vectors: &[f32], text: &[f32]) -> f32 {
    vectors
        .chunks(text.len())
        .map(|q| dot(q, text))
        .fold(f32::MIN, f32::max)
}

#[test]
fn recall_at_k_equals_the_reference_for_k_test_below_and_covering_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let r = reference();
    // (k_test, images embedded by this run: the cache makes the second run model-free)
    for (i, (k_test, embedded)) in [(3, IMAGES), (25, 0)].into_iter().enumerate() {
        let report = eval(&cache, k_test);
        assert_eq!(report["images_embedded"], embedded, "run {i}");
        assert_eq!(
            report["texts_embedded"],
            if i == 0 { TEXTS } else { 0 },
            "run {i}"
        );
        assert_eq!(
            (report["images"].as_u64(), report["texts"].as_u64()),
            (Some(IMAGES), Some(TEXTS))
        );
        let expected = r["rerank"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["k_test"] == k_test)
            .unwrap();
        let ranks = &report["ranks"];
        assert_eq!(
            ranks["itm_rerank"]["i2t"], expected["i2t_ranks"],
            "k_test {k_test}"
        );
        assert_eq!(
            ranks["itm_rerank"]["t2i"], expected["t2i_ranks"],
            "k_test {k_test}"
        );
        assert_metrics_equal(
            &report["itm_rerank"],
            &expected["metrics"],
            &format!("k_test {k_test}"),
        );
        assert_eq!(ranks["itc_exact"]["i2t"], r["itc"]["i2t_ranks"]);
        assert_eq!(ranks["itc_exact"]["t2i"], r["itc"]["t2i_ranks"]);
        assert_metrics_equal(&report["itc_exact"], &r["itc"]["metrics"], "ITC exact");
        // The index scores its top k_test exactly (on 8 images it finds the true top):
        // the same ranks up to k_test, and everything else below them.
        let clip = |v: &Value| -> Vec<u64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_u64().unwrap().min(k_test as u64))
                .collect()
        };
        for dir in ["i2t", "t2i"] {
            assert_eq!(
                clip(&ranks["itc_index"][dir]),
                clip(&ranks["itc_exact"][dir]),
                "k_test {k_test} {dir}"
            );
        }
        let recall = &report["candidate_recall"];
        assert_eq!(
            (recall["i2t"].as_f64(), recall["t2i"].as_f64()),
            (Some(1.0), Some(1.0))
        );
    }

    // What the cache feeds the protocol is what the reference computed: every ITC
    // score (the EXIF-rotated photo included: eval does not rotate it) and every ITM
    // logit over the stored f32 vision features.
    let dir = cache_index_dir(&cache, Precision::F32).unwrap();
    let tiny = tiny();
    let c = qseek::pipeline::Collection::open(
        &dir,
        None,
        &ModelOptions::new(ModelSource::parse(&tiny)),
    )
    .unwrap();
    let (sim, itm) = (matrix(&r["sim_i2t"]), matrix(&r["itm_match"]));
    let ann: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("eval/annotations.json")).unwrap())
            .unwrap();
    let captions: Vec<String> = ann
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["caption"].as_array().unwrap().clone())
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let texts = c.index.texts();
    let text_vector = |t: usize| {
        let id = texts
            .iter()
            .find(|x| x.external_id.as_deref() == Some(&t.to_string()))
            .unwrap()
            .text_id;
        c.index.text_vector(id).unwrap()
    };
    let ids = c.embedder.tokenize(&captions).unwrap();
    let (mut worst_itc, mut worst_itm) = (0f32, 0f32);
    for (i, a) in ann.as_array().unwrap().iter().enumerate() {
        let path = fixtures().join(a["image"].as_str().unwrap());
        let image = c.index.image_by_path(&path.to_string_lossy()).unwrap();
        let vectors = c.index.image_vectors(image.image_id).unwrap();
        for (t, expected) in sim[i].iter().enumerate() {
            worst_itc = worst_itc.max((max_sim(&vectors, &text_vector(t)) - expected).abs());
        }
        let (values, shape) = c.index.vision_features(image.image_id).unwrap().unwrap();
        let vision = Tensor::from_vec(values, shape, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .repeat((ids.len(), 1, 1))
            .unwrap();
        let logits = c.embedder.itm_logits(&vision, &ids).unwrap();
        for (t, l) in logits.to_vec2::<f32>().unwrap().iter().enumerate() {
            worst_itm = worst_itm.max((l[1] - itm[i][t]).abs());
        }
    }
    assert!(worst_itc < 1e-5, "ITC off the reference by {worst_itc:e}");
    assert!(worst_itm < 1e-6, "ITM off the reference by {worst_itm:e}");

    // The same photo upright (as `qseek embed` shows it) scores differently: the check
    // above would catch a rotation.
    let exif = fixtures().join("images/exif6.jpg");
    let out = qseek(&["embed", "image", exif.to_str().unwrap(), "-m", &tiny, "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    let upright: Vec<f32> = matrix(&line["embeds"]).concat();
    let moved = (0..captions.len())
        .map(|t| (max_sim(&upright, &text_vector(t)) - sim[IMAGES as usize - 1][t]).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "rotating moves ITC by only {moved:e}");
}

#[test]
fn a_cache_keeps_one_index_per_precision_and_refuses_other_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let expected = &reference()["rerank"][0];
    assert_eq!(expected["k_test"], 3);
    // (dtype, images embedded by this run)
    for (dtype, embedded) in [("bf16", IMAGES), ("f32", IMAGES), ("bf16", 0), ("f32", 0)] {
        let report = eval_with(&cache, 3, &["--dtype", dtype]);
        assert_eq!(report["images_embedded"], embedded, "{dtype}");
        if dtype == "f32" {
            // As a fresh f32 run: nothing computed in bf16 leaks in.
            assert_eq!(report["ranks"]["itm_rerank"]["i2t"], expected["i2t_ranks"]);
            assert_eq!(report["ranks"]["itm_rerank"]["t2i"], expected["t2i_ranks"]);
            assert_metrics_equal(&report["itm_rerank"], &expected["metrics"], "f32");
        }
    }
    // An index that `qseek index --vectors int8` made is no eval cache, given as the
    // cache folder or where the f32 cache index would be: its "ITC exact" would be
    // quantised.
    let root = tmp.path().join("other");
    let index = cache_index_dir(&root, Precision::F32).unwrap();
    let (photos, tiny) = (fixtures().join("photos"), model_dir("tiny"));
    let out = qseek(&[
        "index",
        photos.to_str().unwrap(),
        "--vectors",
        "int8",
        "--index",
        index.to_str().unwrap(),
        "-m",
        tiny.to_str().unwrap(),
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // (cache folder given, what the one-line refusal says)
    for (cache, says) in [(&index, "not an eval cache"), (&root, "Int8 vectors")] {
        let out = eval_args(cache, &["--k-test", "3"]);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{message}");
        assert_eq!(message.trim().lines().count(), 1, "{message}");
        assert!(message.contains(says), "{message}");
    }
}

/// bf16 ranks every image and text as the f32 reference does: through `qseek eval` with
/// the default kernels (AVX512-BF16 where the CPU has it), then in this process on the
/// other bf16 paths (every bf16 kernel this CPU runs, candle's bf16).
#[test]
fn bf16_ranks_equal_the_f32_reference() {
    ranks_equal_the_f32_reference("bf16");
    let sets = kernel_sets("bf16_ranks_equal_the_f32_reference", &[Axis::Bf16]);
    for set in &sets[1..] {
        ranks_equal_the_f32_reference_with(Precision::Bf16, set.kernels, &set.to_string());
    }
}

/// int8 (the ViT's encoder layers through an int8 kernel, the rest as bf16 with a bf16
/// kernel, else f32) ranks every image and text as the f32 reference does: through `qseek
/// eval` with the default kernels, then in this process on every other int8 kernel this
/// CPU runs (the portable ones on any CPU), each with the bf16 and f32 kernels a CPU of
/// its kind has. Where the CPU has no int8 kernel of its own (not even AVX2's), `qseek
/// eval --dtype int8` is refused instead.
#[test]
fn int8_ranks_equal_the_f32_reference() {
    let sets = kernel_sets("int8_ranks_equal_the_f32_reference", &[Axis::Int8]);
    for set in &sets[1..] {
        ranks_equal_the_f32_reference_with(Precision::Int8, set.kernels, &set.to_string());
    }
    if Precision::Int8.runs_on(&Device::Cpu) {
        ranks_equal_the_f32_reference("int8");
    } else {
        let tmp = tempfile::tempdir().unwrap();
        let out = eval_args(&tmp.path().join("cache"), &["--dtype", "int8"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("AVX512-VNNI"), "{}", stderr(&out));
        eprintln!("int8_ranks_equal_the_f32_reference: this CPU has no int8 kernel; checked the refusal only");
    }
}

/// [`ranks_equal_the_f32_reference`] in this process, on `kernels`: `qseek eval`'s
/// protocol through the library, as the command runs it (batches of 8, k_test 3).
fn ranks_equal_the_f32_reference_with(dtype: Precision, kernels: Kernels, what: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (r, expected) = (reference(), &reference()["rerank"][0]);
    let data = load_dataset(
        &fixtures().join("eval/annotations.json"),
        &fixtures(),
        None,
        None,
    )
    .unwrap();
    let mut opts = ModelOptions::new(ModelSource::parse(&tiny()));
    opts.dtype = dtype;
    opts.kernels = kernels;
    let cache = cache_index_dir(&tmp.path().join("cache"), dtype).unwrap();
    let collection = Collection::open_or_create(
        &cache,
        Some(&tiny()),
        &opts,
        CreateOptions {
            vector_dtype: VectorDtype::F32,
            store_vision_features: true,
            feature_dtype: None,
        },
    )
    .unwrap();
    let eval_opts = EvalOptions {
        k_test: 3,
        index: IndexOptions {
            walk: WalkOptions::default(),
            load: LoadOptions::default(),
            batch: 8,
            commit_every: Duration::from_secs(30),
            progress: false,
        },
        batch: 8,
        progress: false,
    };
    let report = evaluate(&collection, &data, &eval_opts, &AtomicBool::new(false)).unwrap();
    let ranks = serde_json::to_value(&report.ranks).unwrap();
    assert_eq!(ranks["itm_rerank"]["i2t"], expected["i2t_ranks"], "{what}");
    assert_eq!(ranks["itm_rerank"]["t2i"], expected["t2i_ranks"], "{what}");
    assert_eq!(ranks["itc_exact"]["i2t"], r["itc"]["i2t_ranks"], "{what}");
    assert_eq!(ranks["itc_exact"]["t2i"], r["itc"]["t2i_ranks"], "{what}");
}

fn ranks_equal_the_f32_reference(dtype: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (r, expected) = (reference(), &reference()["rerank"][0]);
    assert_eq!(expected["k_test"], 3);
    let report = eval_with(&tmp.path().join("cache"), 3, &["--dtype", dtype]);
    let ranks = &report["ranks"];
    assert_eq!(ranks["itm_rerank"]["i2t"], expected["i2t_ranks"]);
    assert_eq!(ranks["itm_rerank"]["t2i"], expected["t2i_ranks"]);
    assert_eq!(ranks["itc_exact"]["i2t"], r["itc"]["i2t_ranks"]);
    assert_eq!(ranks["itc_exact"]["t2i"], r["itc"]["t2i_ranks"]);
}

#[test]
fn bad_annotations_are_refused_before_any_model_work() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = fixtures().join("photos");
    // (annotations content, fragment of the one-line error)
    let cases = [
        ("not json", "not valid JSON"),
        ("{}", "expected a JSON list"),
        ("[]", "empty"),
        (r#"[{"caption": ["a"]}]"#, "entry 0: no \"image\""),
        (
            r#"[{"image": "coins.png", "caption": [1]}]"#,
            "entry 0 (coins.png)",
        ),
        (r#"[{"image": "coins.png"}]"#, "no \"caption\""),
        (
            r#"[{"image": "coins.png", "caption": ["..."]}]"#,
            "empty once normalised",
        ),
        (
            r#"[{"image": "coins.png", "caption": ["a"]}, {"image": "gone.jpg", "caption": ["b"]}]"#,
            "gone.jpg",
        ),
    ];
    for (i, (content, fragment)) in cases.iter().enumerate() {
        let ann = tmp.path().join(format!("ann{i}.json"));
        std::fs::write(&ann, content).unwrap();
        // A model that does not exist: any model work would fail differently.
        let out = qseek(&[
            "eval",
            "--annotations",
            ann.to_str().unwrap(),
            "--images",
            photos.to_str().unwrap(),
            "-m",
            "/nonexistent/model",
        ]);
        assert_eq!(out.status.code(), Some(2), "{content}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(fragment),
            "{content}: {}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    }
}

#[test]
fn limits_select_a_subset_and_images_without_captions_count_as_misses() {
    let tmp = tempfile::tempdir().unwrap();
    // (flag, value, images, texts, images with a text rank)
    let cases = [
        ("--limit-images", "3", 3, 9, 3),
        ("--limit-texts", "5", IMAGES, 5, 2),
    ];
    for (flag, value, images, texts, ranked) in cases {
        let report = eval_with(&tmp.path().join(flag), 4, &[flag, value]);
        assert_eq!(
            (report["images"].as_u64(), report["texts"].as_u64()),
            (Some(images), Some(texts)),
            "{flag}"
        );
        let i2t = report["ranks"]["itm_rerank"]["i2t"].as_array().unwrap();
        assert_eq!(i2t.len() as u64, images, "{flag}");
        assert_eq!(
            i2t.iter().filter(|r| !r.is_null()).count() as u64,
            ranked,
            "{flag}"
        );
        if flag == "--limit-texts" {
            // LAVIS counts an image left without captions as a miss (rank 1e20): the
            // recall denominators are all 8 images.
            let expected = &reference()["limit_texts"];
            assert_eq!(expected["limit_texts"], 5);
            assert_eq!(expected["k_test"], 4);
            assert_eq!(report["ranks"]["itm_rerank"]["i2t"], expected["i2t_ranks"]);
            assert_eq!(report["ranks"]["itm_rerank"]["t2i"], expected["t2i_ranks"]);
            assert_metrics_equal(&report["itm_rerank"], &expected["metrics"], flag);
            assert_eq!(
                report["ranks"]["itc_exact"]["i2t"],
                expected["itc"]["i2t_ranks"]
            );
            assert_metrics_equal(&report["itc_exact"], &expected["itc"]["metrics"], flag);
        }
    }
}
