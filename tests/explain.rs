//! The ITM Grad-CAM (`qseek explain`'s heat map) against PyTorch's, made by
//! `fixtures/make_gradcam_reference.py` with transformers and autograd, and its
//! behaviour on a photo with a patch swapped.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use common::collection::Collection;
use common::server::encode;
use common::{arg, model_dir, qseek_json, Reference, MODELS};
use qseek::model::gradcam::{cross_attends, default_layer};
use qseek::model::ModelSource;
use qseek::{Embedder, ModelOptions};

fn load(model: &str) -> Embedder {
    Embedder::load(&ModelOptions::new(ModelSource::Local(model_dir(model)))).unwrap()
}

/// Every photo × every caption, at every cross-attention layer: the map is PyTorch's
/// within 1e-5 of its max, and the pass's ITM logits are the reference's.
#[test]
fn gradcam_equals_pytorch_for_every_pair_and_layer() {
    for model in MODELS {
        let embedder = load(model);
        let reference = Reference::load(model);
        let maps = candle_core::safetensors::load(
            model_dir(model).join("gradcam_reference.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let vision = reference.get("vision_last_hidden_state");
        let itm = reference.get("itm_logits");
        let captions = reference.input_ids.len();
        let layers: Vec<usize> = (0..embedder.config.qformer_config.num_hidden_layers)
            .filter(|&l| cross_attends(&embedder.config, l))
            .collect();
        assert!(!layers.is_empty());
        let mut worst = 0f32;
        for &layer in &layers {
            let expected = &maps[&format!("gradcam_layer{layer}")];
            for i in 0..vision.dim(0).unwrap() {
                for (j, ids) in reference.input_ids.iter().enumerate() {
                    let v = vision.i(i..i + 1).unwrap();
                    let cam = embedder.model().itm_gradcam(&v, ids, layer).unwrap();
                    let want: Vec<f32> = expected
                        .i(i * captions + j)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    assert_eq!(cam.map.len(), want.len());
                    assert_eq!(cam.grid * cam.grid, want.len());
                    let max = want.iter().copied().fold(0f32, f32::max);
                    assert!(
                        max > 0.0,
                        "{model} layer {layer} pair ({i}, {j}): an empty map"
                    );
                    let diff = cam
                        .map
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    let ratio = diff / max;
                    worst = worst.max(ratio);
                    assert!(
                        ratio <= 1e-5,
                        "{model} layer {layer} pair ({i}, {j}): max abs diff {diff:e} is {ratio:e} of the map's max {max:e}"
                    );
                    let logits: Vec<f32> = itm.i((i, j)).unwrap().to_vec1().unwrap();
                    for (got, want) in cam.logits.iter().zip(&logits) {
                        assert!((got - want).abs() < 1e-4, "{model} ({i}, {j}) logits");
                    }
                }
            }
        }
        println!("{model}: layers {layers:?}, worst max abs diff / map max = {worst:e}");
    }
}

/// The default layer: the cross-attention layer nearest the middle (tiny: its only one,
/// 0; odd: 3 of 0 and 3; BLIP-2's 12 layers: 6).
#[test]
fn the_default_layer_is_the_cross_attention_nearest_the_middle() {
    assert_eq!(default_layer(&load("tiny").config), 0);
    assert_eq!(default_layer(&load("odd").config), 3);
    let mut full = load("tiny").config;
    full.qformer_config.num_hidden_layers = 12;
    full.qformer_config.cross_attention_frequency = 2;
    assert_eq!(default_layer(&full), 6);
}

/// A layer without cross-attention is refused, not explained.
#[test]
fn a_layer_without_cross_attention_is_refused() {
    let embedder = load("tiny");
    let vision = Reference::load("tiny")
        .get("vision_last_hidden_state")
        .i(0..1)
        .unwrap();
    let err = embedder
        .model()
        .itm_gradcam(&vision, &[101, 102], 1)
        .unwrap_err();
    assert!(err.to_string().contains("no cross-attention"), "{err}");
}

/// Swapping one patch of a photo's pixels for another photo's changes the map at that
/// patch.
#[test]
fn a_swapped_patch_changes_the_map_at_that_patch() {
    let embedder = load("tiny");
    let reference = Reference::load("tiny");
    let pixels = reference.get("pixel_values");
    let p = embedder.config.vision_config.patch_size;
    let grid = embedder.config.vision_config.grid();
    let ids = &reference.input_ids[0];
    let layer = default_layer(&embedder.config);
    let map_of = |pv: &Tensor| {
        let vision = embedder.model().vision_features(pv).unwrap();
        embedder
            .model()
            .itm_gradcam(&vision, ids, layer)
            .unwrap()
            .map
    };
    let cat = pixels.i(0..1).unwrap();
    let before = map_of(&cat);
    // Patch (row 5, column 9) of the cat photo replaced with the rocket photo's.
    let (row, col) = (5, 9);
    let rocket = pixels.i(2..3).unwrap();
    let mut swapped: Vec<f32> = cat.flatten_all().unwrap().to_vec1().unwrap();
    let other: Vec<f32> = rocket.flatten_all().unwrap().to_vec1().unwrap();
    let s = grid * p;
    for c in 0..3 {
        for y in row * p..(row + 1) * p {
            for x in col * p..(col + 1) * p {
                let at = (c * s + y) * s + x;
                swapped[at] = other[at];
            }
        }
    }
    let after = map_of(&Tensor::from_vec(swapped, cat.shape(), &Device::Cpu).unwrap());
    let at = row * grid + col;
    let max = before.iter().copied().fold(0f32, f32::max);
    let change = (after[at] - before[at]).abs();
    assert!(
        change > 0.01 * max,
        "the map at the swapped patch moved {change:e} (map max {max:e})"
    );
}

/// `qseek explain --json --out` on a photo file and `GET /api/explain` on the same photo
/// indexed with its vision features give the same numbers, each text term its own map;
/// `format=png` is the overlay; bad requests are 4xx.
#[test]
fn the_cli_and_the_api_explain_the_same_photo_the_same_way() {
    let c = Collection::with_photos();
    c.index(&[&c.photos], &["--store-vision-features"]);
    let out = c.path("heat.png");
    let tiny = common::tiny();
    let cli = qseek_json(
        &[
            "explain",
            "--image",
            &c.photo("coffee.png"),
            "--text",
            "a cup of coffee",
            "--also",
            "2:a cat",
            "--not",
            "a rocket",
            "--json",
            "--out",
            &arg(&out),
            "-m",
            &tiny,
        ],
        0,
    );
    assert_eq!(cli["grid"], 16);
    assert_eq!(cli["layer"], 0);
    assert_eq!(cli["stored_features"], false);
    let terms = cli["terms"].as_array().unwrap();
    let texts: Vec<(&str, f64)> = terms
        .iter()
        .map(|t| (t["text"].as_str().unwrap(), t["weight"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        texts,
        [("a cup of coffee", 1.0), ("a cat", 2.0), ("a rocket", -1.0)]
    );
    for t in terms {
        let best = &t["itc"]["best"];
        let runner_up = &t["itc"]["runner_up"];
        assert!(best["query"].as_u64().unwrap() < 32);
        assert_ne!(best["query"], runner_up["query"]);
        assert!(best["similarity"].as_f64() >= runner_up["similarity"].as_f64());
        let heat = t["heat"].as_array().unwrap();
        assert_eq!(heat.len(), 16);
        assert!(heat.iter().all(|row| row.as_array().unwrap().len() == 16));
        let [r, col] = [0, 1].map(|i| t["hottest"][i].as_u64().unwrap() as usize);
        assert_eq!(heat[r][col].as_f64(), t["heat_max"].as_f64());
    }
    // One overlay per sentence, the photo's size.
    let (w, h) = image::image_dimensions(c.photos.join("coffee.png")).unwrap();
    for name in ["heat.png", "heat.1.png", "heat.2.png"] {
        let png = image::open(c.path(name)).unwrap();
        assert_eq!(
            (png.width(), png.height()),
            (w.min(768), h.min(768)),
            "{name}"
        );
    }

    let server = c.serve(&[]);
    let found = server.get_json(&format!("/api/search?q={}&k=20", encode("a cup of coffee")));
    let id = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("coffee.png"))
        .unwrap()["image_id"]
        .as_u64()
        .unwrap();
    let query = format!(
        "/api/explain?id={id}&q={}&also={}&not={}",
        encode("a cup of coffee"),
        encode("2:a cat"),
        encode("a rocket")
    );
    let served = server.get_json(&query);
    assert_eq!(served["stored_features"], true);
    assert_eq!(served["image_id"], id);
    for (s, t) in served["terms"].as_array().unwrap().iter().zip(terms) {
        assert_eq!(s["text"], t["text"]);
        assert_eq!(s["itc"]["best"]["query"], t["itc"]["best"]["query"]);
        let close = |a: &serde_json::Value, b: &serde_json::Value, tol: f64| {
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= tol
        };
        assert!(close(
            &s["itc"]["best"]["similarity"],
            &t["itc"]["best"]["similarity"],
            1e-4
        ));
        assert!(close(&s["itm_logit"], &t["itm_logit"], 1e-4));
        let max = t["heat_max"].as_f64().unwrap();
        for (a, b) in s["heat"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .zip(
                t["heat"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|r| r.as_array().unwrap()),
            )
        {
            assert!(close(a, b, 1e-4 * max), "{a} vs {b}");
        }
    }
    let png = server.get(&format!("{query}&format=png&term=2"));
    assert_eq!(png.status, 200, "{}", png.text());
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert_eq!(&png.body[1..4], b"PNG");

    for (what, path, status) in [
        (
            "a layer without cross-attention",
            format!("/api/explain?id={id}&q=a+cat&layer=1"),
            400,
        ),
        ("no sentence", format!("/api/explain?id={id}"), 400),
        (
            "a photo that is not indexed",
            "/api/explain?id=999999&q=a+cat".to_string(),
            404,
        ),
        (
            "an unknown format",
            format!("/api/explain?id={id}&q=a+cat&format=gif"),
            400,
        ),
        (
            "a term past the last",
            format!("/api/explain?id={id}&q=a+cat&format=png&term=1"),
            400,
        ),
        ("no id", "/api/explain?q=a+cat".to_string(), 400),
    ] {
        let reply = server.get(&path);
        assert_eq!(reply.status, status, "{what}: {}", reply.text());
        assert!(reply.json()["error"].is_object(), "{what}");
    }
}
