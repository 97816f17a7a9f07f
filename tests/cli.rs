//! The `qseek` binary, driven as a user would: one small test per behaviour.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{dot, fixtures, floats, model_dir, stderr, tiny, Reference};

fn qseek(args: &[&str]) -> Output {
    qseek_env(args, &[])
}

fn qseek_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qseek"));
    cmd.args(args)
        .env_remove("QSEEK_MODEL")
        .env_remove("HF_HUB_OFFLINE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run qseek")
}

fn stdout_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn photo(name: &str) -> String {
    fixtures().join("photos").join(name).display().to_string()
}

#[test]
fn embed_image_prints_q_unit_vectors_per_file() {
    let out = qseek(&[
        "embed",
        "image",
        &photo("chelsea.png"),
        &photo("coins.png"),
        "--model",
        &tiny(),
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2);
    let reference = Reference::load("tiny");
    let expected = reference.get("image_embeds").to_vec3::<f32>().unwrap();
    for (line, row) in lines.iter().zip([0usize, 6]) {
        let embeds = line["embeds"].as_array().unwrap();
        assert_eq!(embeds.len(), 32);
        for (q, v) in embeds.iter().enumerate() {
            let v = floats(v);
            assert_eq!(v.len(), 256);
            assert!((dot(&v, &v) - 1.0).abs() < 1e-4);
            assert!(
                dot(&v, &expected[row][q]) > 0.999,
                "query {q} of {}",
                line["path"]
            );
        }
    }
}

#[test]
fn embed_text_prints_ids_and_one_unit_vector() {
    let reference = Reference::load("tiny");
    let out = qseek(&[
        "embed",
        "text",
        &reference.captions[2],
        "--model",
        &tiny(),
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = &stdout_lines(&out)[0];
    let ids: Vec<u32> = line["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, reference.input_ids[2]);
    let embed = floats(&line["embed"]);
    let expected = reference.get("text_embeds").to_vec2::<f32>().unwrap();
    assert!(dot(&embed, &expected[2]) > 0.9999);
}

#[test]
fn score_agrees_with_embed_outputs() {
    let text = "a cat lying on a bed";
    let score = qseek(&[
        "score",
        "--image",
        &photo("chelsea.png"),
        "--text",
        text,
        "--model",
        &tiny(),
        "-q",
    ]);
    assert!(score.status.success(), "{}", stderr(&score));
    let line = &stdout_lines(&score)[0];
    let image = &stdout_lines(&qseek(&[
        "embed",
        "image",
        &photo("chelsea.png"),
        "--model",
        &tiny(),
        "-q",
    ]))[0];
    let text_embed = floats(
        &stdout_lines(&qseek(&["embed", "text", text, "--model", &tiny(), "-q"]))[0]["embed"],
    );
    let itc = image["embeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| dot(&floats(v), &text_embed))
        .fold(f32::MIN, f32::max);
    assert!((line["itc"].as_f64().unwrap() as f32 - itc).abs() < 1e-5);
    let logits = floats(&line["itm_logits"]);
    let prob = 1.0 / (1.0 + (logits[0] - logits[1]).exp());
    assert!((line["itm_prob"].as_f64().unwrap() as f32 - prob).abs() < 1e-5);
}

#[test]
fn a_bad_file_is_reported_and_the_others_still_processed() {
    let bad = fixtures().join("images").join("truncated.jpg");
    let missing = "/nonexistent/photo.jpg";
    let out = qseek(&[
        "embed",
        "image",
        &photo("coins.png"),
        &bad.display().to_string(),
        missing,
        "--model",
        &tiny(),
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_lines(&out).len(), 1);
    let err = stderr(&out);
    assert!(
        err.contains("truncated.jpg") && err.contains(missing),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A copy of a fixture model that a test may break.
fn model_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_model(name, &dir);
    (tmp, dir)
}

/// Copies every file of fixture model `name` into `dest` (created).
fn copy_model(name: &str, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
}

fn rewrite_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, serde_json::to_string(&config).unwrap()).unwrap();
}

fn drop_tensor(dir: &Path, name: &str) {
    let file = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    assert!(tensors.remove(name).is_some());
    candle_core::safetensors::save(&tensors, &file).unwrap();
}

#[test]
fn broken_checkpoints_give_one_clear_error() {
    type Break = fn(&Path);
    let cases: &[(&str, Break, &[&str])] = &[
        (
            "missing tensor",
            |d| {
                drop_tensor(
                    d,
                    "qformer.encoder.layer.0.crossattention.attention.key.weight",
                )
            },
            &["qformer.encoder.layer.0.crossattention.attention.key.weight"],
        ),
        (
            "missing qkv bias",
            |d| drop_tensor(d, "vision_model.encoder.layers.1.self_attn.qkv.bias"),
            &["vision_model.encoder.layers.1.self_attn.qkv.bias"],
        ),
        (
            "truncated weights",
            |d| {
                let f = d.join("model.safetensors");
                let len = std::fs::metadata(&f).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            },
            &["model.safetensors"],
        ),
        (
            "missing config",
            |d| std::fs::remove_file(d.join("config.json")).unwrap(),
            &["config.json"],
        ),
        (
            "config key of the wrong type",
            |d| rewrite_config(d, |c| c["vision_config"]["patch_size"] = "14".into()),
            &["vision_config.patch_size"],
        ),
        (
            "missing config key with a wrong default",
            |d| {
                rewrite_config(d, |c| {
                    c["qformer_config"]
                        .as_object_mut()
                        .unwrap()
                        .remove("hidden_size");
                })
            },
            &["expected", "qformer_config.hidden_size"],
        ),
        (
            "shape contradicts config",
            |d| {
                rewrite_config(d, |c| c["vision_config"]["image_size"] = 112.into());
                let pre = d.join("preprocessor_config.json");
                let text = std::fs::read_to_string(&pre).unwrap().replace("224", "112");
                std::fs::write(pre, text).unwrap();
            },
            &["position_embedding", "[1, 65, 48]", "[1, 257, 48]"],
        ),
        (
            "missing tokenizer",
            |d| {
                std::fs::remove_file(d.join("tokenizer.json")).unwrap();
                std::fs::remove_file(d.join("vocab.txt")).unwrap();
            },
            &["tokenizer.json", "vocab.txt"],
        ),
    ];
    for (what, break_it, needles) in cases {
        let (_tmp, dir) = model_copy("tiny");
        break_it(&dir);
        let out = qseek(&[
            "embed",
            "text",
            "a dog",
            "--model",
            &dir.display().to_string(),
            "-q",
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: one line expected: {err}");
        for needle in *needles {
            assert!(
                err.contains(needle),
                "{what}: {err:?} should mention {needle}"
            );
        }
    }
}

#[test]
fn vocab_txt_alone_is_enough() {
    let (_tmp, dir) = model_copy("tiny");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let out = qseek(&[
        "embed",
        "text",
        "A cat lying on a bed.",
        "--model",
        &dir.display().to_string(),
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = &stdout_lines(&out)[0]["input_ids"];
    assert_eq!(ids.as_array().unwrap().len(), 8);
}

/// Lays out `model` as the Hugging Face cache stores `org/name`.
fn fake_hub_cache(model: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let repo = home
        .path()
        .join("hub")
        .join(format!("models--org--{model}"));
    let snapshot = repo.join("snapshots").join("0123abcd");
    copy_model(model, &snapshot);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    home
}

#[test]
fn hub_ids_are_read_from_the_hf_cache_offline() {
    // The odd model is sharded: the index and both shards come from the cache.
    let home = fake_hub_cache("odd");
    let env = [
        ("HF_HOME", home.path().to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let out = qseek_env(
        &["embed", "text", "a dog", "--model", "org/odd", "-q"],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(floats(&stdout_lines(&out)[0]["embed"]).len(), 48);

    let out = qseek_env(
        &["embed", "text", "a dog", "--model", "org/absent", "-q"],
        &env,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("org/absent") && err.contains("HF_HUB_OFFLINE") && err.contains("--model DIR"),
        "{err}"
    );
}

#[test]
fn an_unreachable_hub_says_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("HF_HOME", home.path().to_str().unwrap()),
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let out = qseek_env(
        &["embed", "text", "a dog", "--model", "org/model", "-q"],
        &env,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("config.json") && err.contains("--model DIR"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["embed", "text", "x", "--dtype", "f64"], "f64"),
        (
            &["embed", "text", "x", "--device", "tpu", "--model", "."],
            "tpu",
        ),
        (
            &["score", "--image", "a.jpg", "--text", "...", "--model", "."],
            "empty",
        ),
    ];
    for (args, needle) in cases {
        let out = qseek(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
