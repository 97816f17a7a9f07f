//! The model against transformers' `Blip2ForImageTextRetrieval` on the committed
//! fixtures (`tests/fixtures/make_fixtures.py`): a default-structure model (`tiny`) and
//! one with every size changed, hub-style `q_bias`/`v_bias` and sharded weights (`odd`).
//!
//! Every model test runs on the CPU and, in a build with `--features cuda` on a machine
//! with a GPU, on GPU 0 too ([`devices`]).

mod common;

use candle_core::{DType, Device, Tensor};
use common::kernels::{kernel_sets, Axis, KernelSet};
use common::{max_abs_diff, min_row_cosine, model_dir, Reference, MODELS};
use qseek::model::{ModelSource, Precision};
use qseek::preprocess::image::LoadOptions;
use qseek::{Embedder, ModelOptions};
use qseek_kernels::gemm::Kernels;

/// The CPU, and GPU 0 where the build and the machine have one.
fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    if candle_core::utils::cuda_is_available() {
        devices.push(Device::new_cuda(0).expect("a CUDA build on a machine with a GPU"));
    }
    devices
}

/// Every device with each kernel set of `axes` (`kernel_sets`): on the CPU each path of
/// its GEMMs this CPU runs, on a GPU the default (the kernels are the CPU's).
fn device_sets(test: &str, axes: &[Axis]) -> Vec<(Device, KernelSet)> {
    let sets = kernel_sets(test, axes);
    devices()
        .into_iter()
        .flat_map(|device| {
            let sets = if device.is_cpu() {
                &sets[..]
            } else {
                &sets[..1]
            };
            sets.iter().map(move |set| (device.clone(), *set))
        })
        .collect()
}

/// Every (model, device, kernel set), as [`device_sets`].
fn cases_on(test: &str, axes: &[Axis]) -> Vec<(&'static str, Device, KernelSet)> {
    let sets = device_sets(test, axes);
    MODELS
        .iter()
        .flat_map(|m| sets.iter().map(move |(d, set)| (*m, d.clone(), *set)))
        .collect()
}

fn load(model: &str, dtype: impl Into<Precision>, device: &Device) -> Embedder {
    load_with(model, dtype, device, Kernels::chosen())
}

/// The model on the CPU's `kernels`.
fn load_with(
    model: &str,
    dtype: impl Into<Precision>,
    device: &Device,
    kernels: Kernels,
) -> Embedder {
    let mut opts = ModelOptions::new(ModelSource::Local(model_dir(model)));
    opts.dtype = dtype.into();
    opts.device = device.clone();
    opts.kernels = kernels;
    Embedder::load(&opts).unwrap_or_else(|e| panic!("{model} on {device:?} with {kernels:?}: {e}"))
}

/// A reference tensor on `device`.
fn on(t: &Tensor, device: &Device) -> Tensor {
    t.to_device(device).unwrap()
}

#[test]
fn input_ids_are_identical() {
    for model in MODELS {
        let (embedder, reference) = (
            load(model, DType::F32, &Device::Cpu),
            Reference::load(model),
        );
        assert_eq!(
            embedder.tokenize(&reference.captions).unwrap(),
            reference.input_ids,
            "{model}"
        );
    }
}

#[test]
fn vocab_txt_alone_tokenizes_the_same() {
    let dir = model_dir("tiny");
    let reference = Reference::load("tiny");
    let tokenizer =
        qseek::preprocess::text::TextTokenizer::from_vocab(&dir.join("vocab.txt"), 35).unwrap();
    assert_eq!(tokenizer.vocab_size(), 30523);
    for (caption, expected) in reference.captions.iter().zip(&reference.input_ids) {
        assert_eq!(&tokenizer.encode(caption).unwrap(), expected, "{caption}");
    }
}

#[test]
fn f32_embeddings_and_itm_match_with_identical_pixels() {
    for (model, device, set) in cases_on(
        "f32_embeddings_and_itm_match_with_identical_pixels",
        &[Axis::F32],
    ) {
        let (embedder, reference) = (
            load_with(model, DType::F32, &device, set.kernels),
            Reference::load(model),
        );
        let (vision, image_embeds) = embedder
            .embed_pixels(&on(reference.get("pixel_values"), &device))
            .unwrap();
        let vision_diff = max_abs_diff(&vision, reference.get("vision_last_hidden_state"));
        let image_diff = max_abs_diff(&image_embeds, reference.get("image_embeds"));
        assert!(
            vision_diff < 1e-4,
            "{model} on {set}: vision features differ by {vision_diff}"
        );
        assert!(
            image_diff < 1e-4,
            "{model} on {set}: image embeddings differ by {image_diff}"
        );

        let text_embeds = embedder.embed_token_ids(&reference.input_ids).unwrap();
        let text_diff = max_abs_diff(&text_embeds, reference.get("text_embeds"));
        assert!(
            text_diff < 1e-4,
            "{model} on {set}: text embeddings differ by {text_diff}"
        );

        let itc = qseek::model::itc_scores(&image_embeds, &text_embeds).unwrap();
        let itc_diff = max_abs_diff(&itc, reference.get("itc"));
        assert!(
            itc_diff < 1e-4,
            "{model} on {set}: ITC differs by {itc_diff}"
        );

        // Each image with every text: as pairs (the image repeated), and as one image
        // whose cross-attention keys and values serve all texts.
        let (n, t) = (reference.photos.len(), reference.input_ids.len());
        let (mut pairs, mut shared) = (Vec::new(), Vec::new());
        for i in 0..n {
            let image = vision.narrow(0, i, 1).unwrap();
            let repeated = image.repeat((t, 1, 1)).unwrap();
            pairs.push(
                embedder
                    .itm_logits(&repeated, &reference.input_ids)
                    .unwrap(),
            );
            shared.push(embedder.itm_logits(&image, &reference.input_ids).unwrap());
        }
        let (pairs, shared) = (
            Tensor::stack(&pairs, 0).unwrap(),
            Tensor::stack(&shared, 0).unwrap(),
        );
        let itm_diff = max_abs_diff(&pairs, reference.get("itm_logits"));
        assert!(
            itm_diff < 1e-3,
            "{model} on {set}: ITM logits differ by {itm_diff}"
        );
        let shared_diff = max_abs_diff(&shared, &pairs);
        assert!(
            shared_diff < 1e-6,
            "{model} on {set}: ITM with shared image keys/values differs by {shared_diff}"
        );
    }
}

#[test]
fn lossless_photos_give_pixels_within_one_8bit_step_and_the_same_vectors() {
    files_end_to_end(|p| !is_jpeg(p));
}

/// JPEG photos are decoded by libjpeg-turbo's code (mozjpeg), as Pillow does.
#[test]
fn jpeg_photos_give_pixels_within_one_8bit_step_and_the_same_vectors() {
    files_end_to_end(is_jpeg);
}

fn is_jpeg(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "jpg" || e == "jpeg")
}

/// From the image files: pixel values within one 8-bit step of the reference, and every
/// query vector at cosine ≥ 0.999 to the reference's.
fn files_end_to_end(select: fn(&std::path::Path) -> bool) {
    for (model, device, set) in cases_on("files_end_to_end", &[Axis::F32]) {
        let (embedder, reference) = (
            load_with(model, DType::F32, &device, set.kernels),
            Reference::load(model),
        );
        let rows: Vec<usize> = (0..reference.photos.len())
            .filter(|&i| select(&reference.photos[i]))
            .collect();
        assert!(!rows.is_empty());
        let pixels: Vec<Vec<f32>> = rows
            .iter()
            .map(|&i| {
                embedder
                    .pixel_values(&reference.photos[i], &LoadOptions::default())
                    .unwrap()
            })
            .collect();
        let ours = embedder.pixel_batch(&pixels).unwrap();
        let index = Tensor::new(
            rows.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let theirs = reference
            .get("pixel_values")
            .index_select(&index, 0)
            .unwrap();
        // One 8-bit step is 1/255 before normalisation: at most 1/(255·std) after it.
        let step = 1.0 / (255.0 * 0.261_302_6) + 1e-5;
        let diff = max_abs_diff(&ours, &theirs);
        assert!(
            diff <= step,
            "{model} on {set}: pixel values differ by {diff} (> {step})"
        );

        let (_, embeds) = embedder.embed_pixels(&ours).unwrap();
        let expected = reference
            .get("image_embeds")
            .index_select(&index, 0)
            .unwrap();
        let cosine = min_row_cosine(&embeds, &expected);
        assert!(
            cosine >= 0.999,
            "{model} on {set}: a query vector from the files has cosine {cosine}"
        );
    }
}

#[test]
fn half_precision_stays_close() {
    for dtype in [DType::F16, DType::BF16] {
        for (model, device, set) in cases_on("half_precision_stays_close", &[Axis::F32]) {
            let (embedder, reference) = (
                load_with(model, dtype, &device, set.kernels),
                Reference::load(model),
            );
            let (_, embeds) = embedder
                .embed_pixels(&on(reference.get("pixel_values"), &device))
                .unwrap();
            let cosine = min_row_cosine(&embeds, reference.get("image_embeds"));
            assert!(
                cosine >= 0.99,
                "{model} on {set} {dtype:?}: query vector cosine {cosine}"
            );
            let text = embedder.embed_token_ids(&reference.input_ids).unwrap();
            let cosine = min_row_cosine(&text, reference.get("text_embeds"));
            assert!(
                cosine >= 0.99,
                "{model} on {set} {dtype:?}: text cosine {cosine}"
            );
        }
    }
}

/// `--dtype bf16` against f32 on the same pixels: every query vector within cosine
/// 0.995 (issue 13's bar), on every bf16 path: each bf16 kernel this CPU runs (the
/// portable reference included) and candle's bf16, and with each f32 path.
#[test]
fn bf16_query_vectors_stay_within_cosine_0_995_of_f32() {
    query_vectors_stay_within_cosine_0_995_of_f32(
        "bf16_query_vectors_stay_within_cosine_0_995_of_f32",
        Precision::Bf16,
        &[Axis::Bf16, Axis::F32],
    );
}

/// `--dtype int8` (the ViT's encoder layers in int8) against f32, as bf16 above, on every
/// int8 kernel this CPU runs (the portable ones on any CPU), each with the rest of the
/// ViT as a CPU of its kind runs it (bf16 with a bf16 kernel, else f32), and with each
/// f32 path. Where the CPU has no int8 kernel of its own, `--dtype int8` is refused.
#[test]
fn int8_query_vectors_stay_within_cosine_0_995_of_f32() {
    query_vectors_stay_within_cosine_0_995_of_f32(
        "int8_query_vectors_stay_within_cosine_0_995_of_f32",
        Precision::Int8,
        &[Axis::Int8, Axis::F32],
    );
    if !Precision::Int8.runs_on(&Device::Cpu) {
        let mut opts = ModelOptions::new(ModelSource::Local(model_dir("tiny")));
        opts.dtype = Precision::Int8;
        let err = match Embedder::load(&opts) {
            Ok(_) => panic!("--dtype int8 loaded on a CPU without its kernels"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("AVX512-VNNI"), "{err}");
        eprintln!("int8_query_vectors_stay_within_cosine_0_995_of_f32: no int8 kernel of this CPU's own; checked the refusal (and the portable kernels above)");
    }
}

fn query_vectors_stay_within_cosine_0_995_of_f32(test: &str, precision: Precision, axes: &[Axis]) {
    for (model, device, set) in cases_on(test, axes) {
        if precision == Precision::Int8 && !precision.runs_with(&device, &set.kernels) {
            continue; // a CPU mode, with an int8 kernel
        }
        let pixels = on(Reference::load(model).get("pixel_values"), &device);
        let (_, f32) = load_with(model, DType::F32, &device, set.kernels)
            .embed_pixels(&pixels)
            .unwrap();
        let (_, other) = load_with(model, precision, &device, set.kernels)
            .embed_pixels(&pixels)
            .unwrap();
        let cosine = min_row_cosine(&other, &f32);
        assert!(
            cosine >= 0.995,
            "{model} on {set}: {precision} query vector cosine {cosine}"
        );
    }
}

/// `--dtype bf16`'s text pass is f32's (bit for bit), and its ITM (in bf16 through
/// `packed_gemm` where the CPU has AVX512-BF16) stays within 1% of f32's match
/// probability, on the same vision features.
#[test]
fn bf16_texts_are_f32s_and_its_itm_stays_close() {
    for (model, device, set) in cases_on(
        "bf16_texts_are_f32s_and_its_itm_stays_close",
        &[Axis::Bf16, Axis::F32],
    ) {
        let reference = Reference::load(model);
        let (f32, bf16) = (
            load_with(model, DType::F32, &device, set.kernels),
            load_with(model, DType::BF16, &device, set.kernels),
        );
        let ids = &reference.input_ids;
        let (texts_f32, texts_bf16) = (
            f32.embed_token_ids(ids).unwrap(),
            bf16.embed_token_ids(ids).unwrap(),
        );
        assert_eq!(
            max_abs_diff(&texts_f32, &texts_bf16),
            0.0,
            "{model} on {set}"
        );
        let pixels = on(reference.get("pixel_values"), &device);
        let vision = f32.model().vision_features(&pixels).unwrap();
        for i in 0..vision.dim(0).unwrap() {
            let image = vision.narrow(0, i, 1).unwrap();
            let probability = |e: &Embedder| {
                let logits = e.itm_logits(&image, ids).unwrap();
                candle_nn::ops::softmax_last_dim(&logits).unwrap()
            };
            let diff = max_abs_diff(&probability(&f32), &probability(&bf16));
            assert!(
                diff <= 0.01,
                "{model} on {set} image {i}: ITM probability differs by {diff}"
            );
        }
    }
}

/// A text embedding reads no part of the vision model; the first image reads it, and
/// its numbers are those of the f32 reference (the test above).
#[test]
fn the_vision_model_is_read_at_the_first_image() {
    for (model, device, set) in
        cases_on("the_vision_model_is_read_at_the_first_image", &[Axis::F32])
    {
        let (embedder, reference) = (
            load_with(model, DType::F32, &device, set.kernels),
            Reference::load(model),
        );
        embedder.embed_token_ids(&reference.input_ids).unwrap();
        assert!(!embedder.model().vision_is_loaded(), "{model} on {set}");
        let pixels = on(reference.get("pixel_values"), &device);
        embedder.model().vision_features(&pixels).unwrap();
        assert!(embedder.model().vision_is_loaded(), "{model} on {set}");
    }
}

#[test]
fn an_empty_batch_gives_empty_results() {
    for (device, set) in device_sets("an_empty_batch_gives_empty_results", &[Axis::F32]) {
        let (embedder, reference) = (
            load_with("tiny", DType::F32, &device, set.kernels),
            Reference::load("tiny"),
        );
        let texts = embedder.embed_token_ids(&[]).unwrap();
        assert_eq!(texts.dims(), [0, embedder.config.image_text_hidden_size]);
        let pixels = on(reference.get("pixel_values"), &device);
        let vision = embedder.model().vision_features(&pixels).unwrap();
        let logits = embedder
            .itm_logits(&vision.narrow(0, 0, 1).unwrap(), &[])
            .unwrap();
        assert_eq!(logits.dims(), [0, 2]);
    }
}

#[test]
fn batching_does_not_change_results() {
    for (device, set) in device_sets("batching_does_not_change_results", &[Axis::F32]) {
        let (embedder, reference) = (
            load_with("tiny", DType::F32, &device, set.kernels),
            Reference::load("tiny"),
        );
        let pixels = on(reference.get("pixel_values"), &device);
        let all = embedder.model().vision_features(&pixels).unwrap();
        let one = embedder
            .model()
            .vision_features(&pixels.narrow(0, 2, 1).unwrap())
            .unwrap();
        assert!(max_abs_diff(&all.narrow(0, 2, 1).unwrap(), &one) < 1e-5);
        let texts = embedder.embed_token_ids(&reference.input_ids).unwrap();
        let single = embedder.embed_token_ids(&reference.input_ids[..1]).unwrap();
        assert!(max_abs_diff(&texts.narrow(0, 0, 1).unwrap(), &single) < 1e-5);
    }
}

#[test]
fn a_texts_embedding_does_not_depend_on_its_batch_on_the_cpu() {
    // The text pass skips padding (`Ragged`) and runs its last layer for `[CLS]` only;
    // with `packed_gemm` (every row summed alike, whatever the row count) every text of
    // a batch of mixed lengths gets the bits it gets alone. candle's GEMM (the fallback)
    // blocks by the row count, so there it is only close.
    let sets = kernel_sets(
        "a_texts_embedding_does_not_depend_on_its_batch_on_the_cpu",
        &[Axis::F32],
    );
    for (model, set) in MODELS
        .iter()
        .flat_map(|m| sets.iter().map(move |s| (*m, s)))
    {
        let exact = set.kernels.f32.is_some();
        let embedder = load_with(model, DType::F32, &Device::Cpu, set.kernels);
        let texts = [
            "two dogs",
            "a woman riding a bicycle down a busy city street in the rain at night",
            "a cat",
            "a cup of coffee on a saucer with a spoon",
        ]
        .map(String::from);
        let ids = embedder.tokenize(&texts).unwrap();
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        assert!(lengths.iter().any(|&l| l != lengths[0]), "{lengths:?}");
        let batch = embedder
            .embed_token_ids(&ids)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, one) in ids.iter().enumerate() {
            let alone = embedder
                .embed_token_ids(std::slice::from_ref(one))
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let what = format!("{model} on {set}: text {i} ({} tokens)", one.len());
            if exact {
                assert_eq!(
                    batch[i].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    alone[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{what}"
                );
            } else {
                let diff = batch[i]
                    .iter()
                    .zip(&alone[0])
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(diff < 1e-5, "{what}: {diff}");
            }
        }
    }
}

/// A copy of fixture `model` (in a folder of its own under the target's temporary
/// folder) whose vision layer norms (`layer_norm1`, `layer_norm2`) have `channels`
/// channels of their weight times `factor`: the outlier channels of trained checkpoints
/// (`make_fixtures.py --outliers` makes the full-size ones).
fn stress_variant(model: &str, factor: f32, channels: &[usize]) -> std::path::PathBuf {
    let src = model_dir(model);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("stress-{model}-{factor}x{}", channels.len()));
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        let is_weights = name.to_string_lossy().starts_with("model")
            && path.extension().is_some_and(|e| e == "safetensors");
        if !is_weights {
            std::fs::copy(&path, out.join(&name)).unwrap();
            continue;
        }
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        for (name, t) in tensors.iter_mut() {
            let norm = name.ends_with("layer_norm1.weight") || name.ends_with("layer_norm2.weight");
            if norm && name.starts_with("vision_model.encoder.layers.") {
                let mut w = t.to_vec1::<f32>().unwrap();
                for &c in channels {
                    w[c] *= factor;
                }
                *t = Tensor::new(w, &Device::Cpu).unwrap();
            }
        }
        candle_core::safetensors::save(&tensors, out.join(&name)).unwrap();
    }
    out
}

/// `--dtype int8` on stress variants of the fixtures, with a few channels of every vision
/// layer norm 50× the rest: on every int8 kernel this CPU runs, every query vector stays
/// within cosine 0.997 of f32's. Coding each row with one step spent its codes on those
/// channels: 0.936–0.957 (tiny) and 0.974–0.989 (odd) before the outlier handling;
/// 0.9992–0.99988 and 0.9977–0.9996 with it, where bf16 gives 0.9934–0.9944 and
/// 0.9981–0.9993.
#[test]
fn int8_keeps_its_precision_with_outlier_channels() {
    for (model, channels) in [("tiny", &[5usize, 17, 40][..]), ("odd", &[3, 11][..])] {
        let dir = stress_variant(model, 50.0, channels);
        let pixels = Reference::load(model).get("pixel_values").clone();
        let load = |precision: Precision, kernels: Kernels| {
            let mut opts = ModelOptions::new(ModelSource::Local(dir.clone()));
            opts.dtype = precision;
            opts.kernels = kernels;
            Embedder::load(&opts).unwrap_or_else(|e| panic!("{model} stress: {e}"))
        };
        for set in kernel_sets(
            "int8_keeps_its_precision_with_outlier_channels",
            &[Axis::Int8],
        ) {
            if !Precision::Int8.runs_with(&Device::Cpu, &set.kernels) {
                continue;
            }
            let (_, f32) = load(Precision::F32, set.kernels)
                .embed_pixels(&pixels)
                .unwrap();
            let (_, int8) = load(Precision::Int8, set.kernels)
                .embed_pixels(&pixels)
                .unwrap();
            let cosine = min_row_cosine(&int8, &f32);
            eprintln!("{model} stress on {set}: int8 min cosine {cosine}");
            assert!(
                cosine >= 0.997,
                "{model} stress ({channels:?} × 50) on {set}: int8 query vector cosine {cosine}"
            );
        }
    }
}
