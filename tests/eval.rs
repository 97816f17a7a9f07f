//! `qseek eval` against an independent reference: `tests/fixtures/make_eval_fixtures.py`
//! ran the transformers model and LAVIS's `compute_sim_matrix` / `_report_metrics`
//! formulas (numpy) on 7 photos × 3 captions; its ranks and R@K are committed.

mod common;

use common::{fixtures, model_dir, qseek, stderr};
use serde_json::Value;

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("eval/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn eval(cache: &std::path::Path, k_test: usize) -> Value {
    eval_with(cache, k_test, &[])
}

fn eval_with(cache: &std::path::Path, k_test: usize, extra: &[&str]) -> Value {
    let (ann, photos, tiny) = (
        fixtures().join("eval/annotations.json"),
        fixtures().join("photos"),
        model_dir("tiny"),
    );
    let k = k_test.to_string();
    let mut args = vec![
        "eval",
        "--annotations",
        ann.to_str().unwrap(),
        "--images",
        photos.to_str().unwrap(),
        "-m",
        tiny.to_str().unwrap(),
        "--k-test",
        &k,
        "--cache",
        cache.to_str().unwrap(),
        "--json",
        "-q",
    ];
    args.extend(extra);
    let out = qseek(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
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

#[test]
fn recall_at_k_equals_the_reference_for_k_test_below_and_covering_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let r = reference();
    // (k_test, images embedded by this run: the cache makes the second run model-free)
    for (i, (k_test, embedded)) in [(3, 7), (25, 0)].into_iter().enumerate() {
        let report = eval(&cache, k_test);
        assert_eq!(report["images_embedded"], embedded, "run {i}");
        assert_eq!(
            report["texts_embedded"],
            if i == 0 { 21 } else { 0 },
            "run {i}"
        );
        assert_eq!(
            (report["images"].as_u64(), report["texts"].as_u64()),
            (Some(7), Some(21))
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
        // The index scores its top k_test exactly (on 7 images it finds the true top):
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
fn limits_select_a_subset_and_images_without_captions_have_no_text_rank() {
    let tmp = tempfile::tempdir().unwrap();
    // (flag, value, images, texts, images with a text rank)
    let cases = [
        ("--limit-images", "3", 3, 9, 3),
        ("--limit-texts", "5", 7, 5, 2),
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
    }
}
