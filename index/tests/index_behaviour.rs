//! One small test per behaviour of the index.

mod common;

use common::*;
use qseek_index::{
    days_from_civil, DupParams, Error, FeatureDtype, Filter, Gps, Index, Near, PhotoFilter,
    PhotoMeta, SearchParams, TakenAt, VectorDtype, FORMAT_VERSION,
};

fn exact() -> SearchParams {
    SearchParams {
        exact: true,
        ..SearchParams::default()
    }
}

/// Forces the graph path even on tiny collections.
fn ann() -> SearchParams {
    SearchParams {
        exact_below: 0,
        candidates: 10,
        ..SearchParams::default()
    }
}

/// An index with `n` images `img/{i}.jpg` whose vectors are `unit_vectors(i, Q)`.
fn index_with_images(dir: &std::path::Path, n: u64) -> Index {
    let index = create(dir);
    let mut w = index.writer().unwrap();
    for i in 0..n {
        w.add_image(
            record(&format!("img/{i}.jpg"), &format!("h{i}")),
            &unit_vectors(i, Q),
            None,
        )
        .unwrap();
    }
    w.commit().unwrap();
    drop(w);
    index
}

#[test]
fn a_query_equal_to_a_slot_finds_that_image_with_score_one() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_with_images(dir.path(), 50);
    let query = &unit_vectors(17, Q)[2 * D..3 * D];
    for params in [exact(), ann()] {
        let hits = index.search_images(query, 3, &params).unwrap();
        assert_eq!(hits[0].paths, vec!["img/17.jpg"]);
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        assert_eq!(hits[0].best_slot, 2);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

#[test]
fn ann_and_exact_agree_on_scores_of_returned_images() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_with_images(dir.path(), 200);
    let query = &unit_vectors(999, 1);
    let exact_hits = index.search_images(query, 5, &exact()).unwrap();
    let ann_hits = index
        .search_images(
            query,
            5,
            &SearchParams {
                exact_below: 0,
                ..SearchParams::default()
            },
        )
        .unwrap();
    assert_eq!(exact_hits, ann_hits);
}

#[test]
fn reopen_restores_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let index = index_with_images(dir.path(), 20);
        index
            .search_images(&unit_vectors(5, 1), 5, &exact())
            .unwrap()
    };
    let index = Index::open(dir.path(), Some(&model())).unwrap();
    assert_eq!(
        index
            .search_images(&unit_vectors(5, 1), 5, &exact())
            .unwrap(),
        before
    );
    assert!(index.verify().is_ok(), "{}", index.verify());
}

#[test]
fn uncommitted_changes_are_invisible_and_lost_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_with_images(dir.path(), 3);
    let mut w = index.writer().unwrap();
    w.add_image(record("new.jpg", "hnew"), &unit_vectors(100, Q), None)
        .unwrap();
    assert!(w.remove_path("img/0.jpg").unwrap());
    assert!(index.image_by_path("new.jpg").is_none());
    assert!(index.image_by_path("img/0.jpg").is_some());
    drop(w);
    drop(index);
    let index = Index::open(dir.path(), None).unwrap();
    assert_eq!(index.paths(), vec!["img/0.jpg", "img/1.jpg", "img/2.jpg"]);
}

#[test]
fn identical_bytes_share_one_image() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let mut w = index.writer().unwrap();
    let a = w
        .add_image(record("a.jpg", "same"), &unit_vectors(1, Q), None)
        .unwrap();
    let b = w
        .add_image(record("copy/a.jpg", "same"), &unit_vectors(2, Q), None)
        .unwrap();
    let c = w.add_path(record("copy2/a.jpg", "same")).unwrap();
    w.commit().unwrap();
    assert_eq!((a, a), (b, c));
    assert_eq!(index.stats().images, 1);
    assert_eq!(index.stats().paths, 3);
    let hit = &index
        .search_images(&unit_vectors(1, 1), 1, &exact())
        .unwrap()[0];
    assert_eq!(hit.paths, vec!["a.jpg", "copy/a.jpg", "copy2/a.jpg"]);
    assert!(matches!(
        w.add_path(record("x.jpg", "unknown")),
        Err(Error::UnknownHash { .. })
    ));
}

#[test]
fn removing_the_last_path_removes_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_with_images(dir.path(), 3);
    let mut w = index.writer().unwrap();
    w.add_path(record("dup.jpg", "h1")).unwrap();
    w.remove_path("img/1.jpg").unwrap();
    w.commit().unwrap();
    assert_eq!(index.stats().images, 3);
    w.remove_path("dup.jpg").unwrap();
    w.commit().unwrap();
    assert_eq!(index.stats().images, 2);
    assert!(index.image_by_hash("h1").is_none());
    assert_eq!(index.stats().dead_image_rows, 1);
    assert!(index.verify().is_ok(), "{}", index.verify());
}

#[test]
fn re_adding_a_path_with_new_bytes_replaces_its_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_with_images(dir.path(), 3);
    let mut w = index.writer().unwrap();
    w.add_image(record("img/0.jpg", "edited"), &unit_vectors(50, Q), None)
        .unwrap();
    w.commit().unwrap();
    let hit = &index
        .search_images(&unit_vectors(50, 1), 1, &exact())
        .unwrap()[0];
    assert_eq!(hit.paths, vec!["img/0.jpg"]);
    assert!((hit.score - 1.0).abs() < 1e-5);
    assert!(index.image_by_hash("h0").is_none());
    assert_eq!(index.stats().images, 3);
}

#[test]
fn compact_drops_tombstones_and_keeps_every_live_item() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_with_images(dir.path(), 40);
    let mut w = index.writer().unwrap();
    for i in (0..40).step_by(2) {
        w.remove_path(&format!("img/{i}.jpg")).unwrap();
    }
    w.add_text("a text", None, &unit_vectors(7, 1)).unwrap();
    w.commit().unwrap();
    drop(w);
    let before = index
        .search_images(&unit_vectors(9, 1), 10, &exact())
        .unwrap();
    index.compact().unwrap();
    let stats = index.stats();
    assert_eq!(
        (
            stats.images,
            stats.dead_image_rows,
            stats.image_graph_points
        ),
        (20, 0, 40)
    );
    assert_eq!(
        index
            .search_images(&unit_vectors(9, 1), 10, &exact())
            .unwrap(),
        before
    );
    assert!(index.verify().is_ok(), "{}", index.verify());
    drop(index);
    let index = Index::open(dir.path(), None).unwrap();
    assert_eq!(
        index
            .search_images(&unit_vectors(9, 1), 10, &ann())
            .unwrap()[0],
        before[0]
    );
    assert!(index.verify().is_ok(), "{}", index.verify());
}

#[test]
fn texts_are_found_by_the_max_over_query_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let mut w = index.writer().unwrap();
    for i in 0..30u64 {
        w.add_text(
            &format!("caption number {i}"),
            Some(format!("ext{i}")),
            &unit_vectors(1000 + i, 1),
        )
        .unwrap();
    }
    w.commit().unwrap();
    // An image whose third query vector is text 12's vector.
    let mut queries = unit_vectors(5, Q);
    queries[2 * D..3 * D].copy_from_slice(&unit_vectors(1012, 1));
    for params in [exact(), ann()] {
        let hit = &index.search_texts(&queries, 3, &params).unwrap()[0];
        assert_eq!(
            (hit.text.as_str(), hit.external_id.as_deref()),
            ("caption number 12", Some("ext12"))
        );
        assert_eq!(hit.best_slot, 2);
        assert!((hit.score - 1.0).abs() < 1e-5);
    }
    assert_eq!(index.texts().len(), 30);
}

#[test]
fn text_filter_restricts_texts() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let mut w = index.writer().unwrap();
    w.add_text("a dog on a beach", None, &unit_vectors(1, 1))
        .unwrap();
    w.add_text("a cat on a sofa", None, &unit_vectors(2, 1))
        .unwrap();
    w.commit().unwrap();
    let params = SearchParams {
        filter: Some(Filter {
            path_prefix: None,
            query: Some("cat".into()),
            ..Default::default()
        }),
        ..SearchParams::default()
    };
    let hits = index.search_texts(&unit_vectors(1, Q), 5, &params).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].text, "a cat on a sofa");
}

/// Issue 14: the text search did not dig deeper when a filter left too few
/// of the graph's hits, so a filtered ANN search missed what an exact one found.
#[test]
fn a_selective_text_filter_loses_no_recall_through_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let mut w = index.writer().unwrap();
    for i in 0..2000u64 {
        let text = if i % 50 == 0 {
            format!("a heron by the lake {i}")
        } else {
            format!("a street in the city {i}")
        };
        w.add_text(&text, None, &unit_vectors(i, 1)).unwrap();
    }
    w.commit().unwrap();
    drop(w);
    let filter = Some(Filter {
        path_prefix: None,
        query: Some("heron".into()),
        ..Default::default()
    });
    for seed in [7, 4242, 90001] {
        let queries = unit_vectors(seed, Q);
        let expected = index
            .search_texts(
                &queries,
                5,
                &SearchParams {
                    filter: filter.clone(),
                    ..exact()
                },
            )
            .unwrap();
        assert_eq!(expected.len(), 5);
        let through_graph = SearchParams {
            filter: filter.clone(),
            ..ann()
        };
        let got = index.search_texts(&queries, 5, &through_graph).unwrap();
        assert_eq!(got, expected, "queries {seed}");
    }
}

#[test]
fn export_yields_every_committed_item_once_as_of_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_with_images(dir.path(), 30);
    let mut w = index.writer().unwrap();
    // A copy (second path, same bytes), a removed image, a text.
    w.add_path(record("copies/3.jpg", "h3")).unwrap();
    w.remove_path("img/7.jpg").unwrap();
    let text = w
        .add_text("a heron", Some("t1".into()), &unit_vectors(77, 1))
        .unwrap();
    w.commit().unwrap();

    let images = index.export_images();
    let texts = index.export_texts();
    assert_eq!(images.len(), 29);
    // Made after the export: not in it.
    w.add_image(record("img/new.jpg", "hnew"), &unit_vectors(500, Q), None)
        .unwrap();
    w.remove_path("img/8.jpg").unwrap();
    w.commit().unwrap();

    let exported: Vec<_> = images.collect();
    assert_eq!(exported.len(), 29);
    assert!(exported.windows(2).all(|w| w[0].image_id < w[1].image_id));
    for e in &exported {
        let i: u64 = e.content_hash[1..].parse().unwrap();
        assert_ne!(i, 7);
        assert_eq!(e.vectors, unit_vectors(i, Q), "image {i}");
        let mut paths: Vec<&str> = e.paths.iter().map(|p| p.path.as_str()).collect();
        paths.sort();
        let own = format!("img/{i}.jpg");
        let expected: Vec<&str> = if i == 3 {
            vec!["copies/3.jpg", &own]
        } else {
            vec![&own]
        };
        assert_eq!(paths, expected);
    }
    let texts: Vec<_> = texts.collect();
    assert_eq!(texts.len(), 1);
    assert_eq!(
        (texts[0].text_id, texts[0].text.as_str()),
        (text, "a heron")
    );
    assert_eq!(texts[0].external_id.as_deref(), Some("t1"));
    assert_eq!(texts[0].vector, unit_vectors(77, 1));
    // A new export sees the later commit.
    assert_eq!(index.export_images().len(), 29);
    assert!(index.export_images().any(|e| e.content_hash == "hnew"));
}

#[test]
fn filters_by_path_prefix_and_by_tantivy_query_lose_no_recall() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let mut w = index.writer().unwrap();
    for i in 0..300u64 {
        let folder = if i % 10 == 0 { "beach" } else { "city" };
        w.add_image(
            record(&format!("{folder}/photo_{i}.jpg"), &format!("h{i}")),
            &unit_vectors(i, Q),
            None,
        )
        .unwrap();
    }
    w.commit().unwrap();
    let query = unit_vectors(4242, 1);
    for filter in [
        Filter {
            path_prefix: Some("beach/".into()),
            query: None,
            ..Default::default()
        },
        Filter {
            path_prefix: None,
            query: Some("path:beach".into()),
            ..Default::default()
        },
    ] {
        let expected = index
            .search_images(
                &query,
                5,
                &SearchParams {
                    filter: Some(filter.clone()),
                    ..exact()
                },
            )
            .unwrap();
        // Default parameters: 30 allowed images are few enough to score exactly.
        let default = SearchParams {
            filter: Some(filter.clone()),
            ..SearchParams::default()
        };
        assert_eq!(index.search_images(&query, 5, &default).unwrap(), expected);
        // Forced through the graph, asking for as many candidates as the filter
        // allows: the search must dig until it has found every one of them.
        let deep = SearchParams {
            filter: Some(filter.clone()),
            candidates: 30,
            ..ann()
        };
        let got = index.search_images(&query, 5, &deep).unwrap();
        assert_eq!(got, expected, "{filter:?}");
        assert!(got.iter().all(|h| h.paths[0].starts_with("beach/")));
    }
    let bad = SearchParams {
        filter: Some(Filter {
            path_prefix: None,
            query: Some("name:(".into()),
            ..Default::default()
        }),
        ..SearchParams::default()
    };
    assert!(matches!(
        index.search_images(&query, 5, &bad),
        Err(Error::BadQuery { .. })
    ));
}

#[test]
fn a_batch_of_queries_finds_what_each_query_finds_alone() {
    for dtype in [VectorDtype::F32, VectorDtype::F16, VectorDtype::Int8] {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::create(dir.path(), manifest(dtype)).unwrap();
        let mut w = index.writer().unwrap();
        for i in 0..120u64 {
            let folder = if i % 4 == 0 { "beach" } else { "city" };
            w.add_image(
                record(&format!("{folder}/{i}.jpg"), &format!("h{i}")),
                &unit_vectors(i, Q),
                None,
            )
            .unwrap();
        }
        w.commit().unwrap();
        // Two queries close to indexed slots, one far from all, and a duplicate.
        let queries: Vec<Vec<f32>> = [5u64, 77, 5000, 5]
            .iter()
            .map(|&seed| unit_vectors(seed, 1))
            .collect();
        let queries: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
        let beach = Some(Filter {
            path_prefix: Some("beach/".into()),
            query: None,
            ..Default::default()
        });
        for (what, k, params) in [
            ("exact", 7, exact()),
            ("exact, k past the end", 500, exact()),
            (
                "exact, filtered",
                7,
                SearchParams {
                    filter: beach.clone(),
                    ..exact()
                },
            ),
            ("graph", 7, ann()),
            (
                "graph, filtered",
                7,
                SearchParams {
                    filter: beach.clone(),
                    ..ann()
                },
            ),
        ] {
            let alone: Vec<_> = queries
                .iter()
                .map(|q| index.search_images(q, k, &params).unwrap())
                .collect();
            let batch = index.search_images_many(&queries, k, &params).unwrap();
            assert_eq!(batch, alone, "{dtype:?}, {what}");
        }
        assert!(matches!(
            index.search_images_many(&[&[0.5; 3]], 3, &exact()),
            Err(Error::WrongVectorDimension { .. })
        ));
    }
}

#[test]
fn similar_images_ranks_a_near_copy_first() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_with_images(dir.path(), 100);
    let mut near = unit_vectors(33, Q);
    near.iter_mut()
        .zip(unit_vectors(7777, Q))
        .for_each(|(x, n)| *x += 0.1 * n);
    near.chunks_exact_mut(D).for_each(normalise);
    let hits = index.similar_images(&near, 3, &ann()).unwrap();
    assert_eq!(hits[0].paths, vec!["img/33.jpg"]);
    let id = index.image_by_path("img/33.jpg").unwrap().image_id;
    let hits = index.similar_to_image(id, 3, &exact()).unwrap();
    assert!(hits.iter().all(|h| h.image_id != id));
    assert_eq!(hits.len(), 3);
}

#[test]
fn every_dtype_returns_the_same_top_image_with_close_scores() {
    for dtype in [VectorDtype::F32, VectorDtype::F16, VectorDtype::Int8] {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::create(dir.path(), manifest(dtype)).unwrap();
        let mut w = index.writer().unwrap();
        for i in 0..30u64 {
            w.add_image(
                record(&format!("{i}.jpg"), &format!("h{i}")),
                &unit_vectors(i, Q),
                None,
            )
            .unwrap();
        }
        w.commit().unwrap();
        let hit = &index
            .search_images(&unit_vectors(12, 1), 1, &exact())
            .unwrap()[0];
        assert_eq!(hit.paths, vec!["12.jpg"], "{dtype:?}");
        assert!((hit.score - 1.0).abs() < 0.01, "{dtype:?}: {}", hit.score);
        assert!(index.verify().is_ok(), "{dtype:?}: {}", index.verify());
    }
}

#[test]
fn vision_features_round_trip_in_the_manifests_dtype() {
    // 0.1 is not an f16 value: f32 keeps it, f16 rounds it to the nearest (2^-14 steps
    // near 0.1, so within 5e-5).
    let features: Vec<f32> = (0..3 * 5).map(|i| i as f32 * 0.1).collect();
    // (stored as, bytes per value, largest error)
    let cases = [(FeatureDtype::F32, 4, 0.0), (FeatureDtype::F16, 2, 5e-4)];
    for (dtype, bytes, tolerance) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest(VectorDtype::F32);
        m.store_vision_features = true;
        m.vision_feature_dtype = dtype;
        let index = Index::create(dir.path(), m).unwrap();
        let mut w = index.writer().unwrap();
        let id = w
            .add_image(
                record("a.jpg", "ha"),
                &unit_vectors(1, Q),
                Some((&features, &[3, 5])),
            )
            .unwrap();
        w.commit().unwrap();
        drop(w);
        drop(index);
        let index = Index::open(dir.path(), None).unwrap();
        assert_eq!(index.manifest().vision_feature_dtype, dtype);
        let (got, shape) = index.vision_features(id).unwrap().unwrap();
        assert_eq!(shape, vec![3, 5]);
        let worst = got
            .iter()
            .zip(&features)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tolerance, "{dtype:?}: off by {worst}");
        if dtype == FeatureDtype::F16 {
            assert!(worst > 0.0, "f16 must round 0.1");
        }
        assert_eq!(index.stats().vision_features_bytes, 15 * bytes, "{dtype:?}");
        // Compaction copies them whole.
        let mut w = index.writer().unwrap();
        w.compact().unwrap();
        drop(w);
        assert_eq!(index.vision_features(id).unwrap().unwrap().0, got);
        assert!(index.verify().is_ok(), "{dtype:?}: {}", index.verify());
    }
}

#[test]
fn vision_features_are_refused_when_the_index_does_not_store_them() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let mut w = index.writer().unwrap();
    let r = w.add_image(
        record("a.jpg", "ha"),
        &unit_vectors(1, Q),
        Some((&[1.0], &[1])),
    );
    assert!(matches!(r, Err(Error::VisionFeatures { .. })));
}

#[test]
fn wrong_vector_dimension_is_reported_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let mut w = index.writer().unwrap();
    let r = w.add_image(record("a.jpg", "ha"), &unit_vectors(1, Q - 1), None);
    assert!(
        matches!(r, Err(Error::WrongVectorDimension { expected, received }) if expected == Q * D && received == (Q - 1) * D)
    );
    let r = index.search_images(&[1.0; 3], 1, &SearchParams::default());
    assert!(matches!(
        r,
        Err(Error::WrongVectorDimension {
            expected: D,
            received: 3
        })
    ));
}

#[test]
fn only_one_writer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let w = index.writer().unwrap();
    assert!(matches!(index.writer(), Err(Error::WriterBusy)));
    drop(w);
    assert!(index.writer().is_ok());
}

#[test]
fn an_index_open_elsewhere_is_reported_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let err = Index::open(dir.path(), None).err().unwrap();
    assert!(matches!(err, Error::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(index);
    assert!(Index::open(dir.path(), None).is_ok());
}

#[test]
fn opening_with_another_model_fails_and_names_both() {
    let dir = tempfile::tempdir().unwrap();
    drop(create(dir.path()));
    let other = qseek_index::ModelId {
        model_id: "test/blip2".into(),
        config_hash: "cfg2".into(),
    };
    let err = Index::open(dir.path(), Some(&other)).err().unwrap();
    assert!(matches!(err, Error::ModelMismatch { .. }));
    assert!(
        err.to_string().contains("cfg1") && err.to_string().contains("cfg2"),
        "{err}"
    );
}

#[test]
fn opening_a_newer_format_fails() {
    let dir = tempfile::tempdir().unwrap();
    drop(create(dir.path()));
    let path = dir.path().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("\"format_version\": {FORMAT_VERSION}"),
        "\"format_version\": 99",
    );
    std::fs::write(&path, text).unwrap();
    let err = Index::open(dir.path(), None).err().unwrap();
    assert!(matches!(err, Error::NewerFormat { found: 99, .. }), "{err}");
}

#[test]
fn creating_over_an_existing_index_fails() {
    let dir = tempfile::tempdir().unwrap();
    drop(create(dir.path()));
    assert!(matches!(
        Index::create(dir.path(), manifest(VectorDtype::F32)),
        Err(Error::AlreadyExists { .. })
    ));
}

#[test]
fn a_corrupt_manifest_is_named_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(create(dir.path()));
    std::fs::write(dir.path().join("manifest.json"), b"{ not json").unwrap();
    let err = Index::open(dir.path(), None).err().unwrap();
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

#[test]
fn a_truncated_vector_file_is_named_on_open_and_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_with_images(dir.path(), 5);
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("image_vectors")
        })
        .unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let report = index.verify();
    assert!(!report.is_ok());
    assert!(report.problems[0].contains("image_vectors"), "{report}");
    drop(index);
    let err = Index::open(dir.path(), None).err().unwrap();
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("image_vectors"), "{err}");
}

#[test]
fn a_missing_lexical_index_is_rebuilt_from_metadata() {
    let dir = tempfile::tempdir().unwrap();
    drop(index_with_images(dir.path(), 5));
    std::fs::remove_dir_all(dir.path().join("lexical")).unwrap();
    let index = Index::open(dir.path(), None).unwrap();
    assert!(index.verify().is_ok(), "{}", index.verify());
    let params = SearchParams {
        filter: Some(Filter {
            path_prefix: None,
            query: Some("name:3.jpg".into()),
            ..Default::default()
        }),
        ..exact()
    };
    let hits = index
        .search_images(&unit_vectors(0, 1), 5, &params)
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].paths, vec!["img/3.jpg"]);
}

/// The saved graph (`images.graph`) is a cache: reused when it still fits the
/// vectors, extended with images added since, and rebuilt (and saved again)
/// when it is damaged or the vector file was rewritten. Each row: what happens
/// between saving and reopening, and whether the file must be rewritten.
#[test]
fn the_saved_graph_is_reused_extended_or_rebuilt() {
    type Change = fn(&Index, &std::path::Path);
    let cases: [(&str, Change, bool); 7] = [
        ("nothing", |_, _| {}, false),
        ("images added", |index, _| add_images(index, 60..70), false),
        (
            "images removed",
            |index, _| remove_images(index, 0..10),
            false,
        ),
        (
            "many images added",
            |index, _| add_images(index, 60..1200),
            true,
        ),
        (
            "compacted",
            |index, _| {
                remove_images(index, 0..10);
                index.compact().unwrap();
            },
            true,
        ),
        (
            "file truncated",
            |_, file| {
                let len = std::fs::metadata(file).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(file)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            },
            true,
        ),
        (
            "one byte flipped",
            |_, file| {
                let mut bytes = std::fs::read(file).unwrap();
                let at = bytes.len() / 2;
                bytes[at] ^= 0x40;
                std::fs::write(file, bytes).unwrap();
            },
            true,
        ),
    ];
    for (what, change, rewritten) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("images.graph");
        let index = create(dir.path());
        add_images(&index, 0..60);
        index.build_graphs();
        change(&index, &file);
        drop(index);
        // What the next open finds (a damaged file, or the one the build saved).
        let found = std::fs::read(&file).unwrap();

        let index = Index::open(dir.path(), None).unwrap();
        let live: Vec<u64> = (0..1200)
            .filter(|i| index.image_by_path(&format!("img/{i}.jpg")).is_some())
            .collect();
        // Every live image is found by the graph from its vector;
        // removed ones never come back.
        for &i in live.iter().step_by(7) {
            let hits = index.search_images(&unit_vectors(i, 1), 3, &ann()).unwrap();
            assert_eq!(
                hits[0].paths,
                vec![format!("img/{i}.jpg")],
                "{what}: image {i}"
            );
        }
        let ann_hits = index
            .search_images(&unit_vectors(4242, 1), 50, &ann())
            .unwrap();
        assert!(
            ann_hits
                .iter()
                .all(|h| index.image_by_path(&h.paths[0]).is_some()),
            "{what}"
        );
        // Compared with what the open found, not with the first save: a rebuild
        // of a small graph may write the very bytes of the first one.
        assert_eq!(
            std::fs::read(&file).unwrap() != found,
            rewritten,
            "{what}: file rewritten"
        );
        assert!(index.verify().is_ok(), "{what}: {}", index.verify());
    }
}

/// Adds images `img/{i}.jpg` whose Q slots all hold `unit_vectors(i, 1)`, so
/// that their graph points are that vector and a search for it must find them.
fn add_images(index: &Index, range: std::ops::Range<u64>) {
    let mut w = index.writer().unwrap();
    for i in range {
        w.add_image(
            record(&format!("img/{i}.jpg"), &format!("h{i}")),
            &unit_vectors(i, 1).repeat(Q),
            None,
        )
        .unwrap();
    }
    w.commit().unwrap();
}

fn remove_images(index: &Index, range: std::ops::Range<u64>) {
    let mut w = index.writer().unwrap();
    for i in range {
        w.remove_path(&format!("img/{i}.jpg")).unwrap();
    }
    w.commit().unwrap();
}

/// An int8 index written by format version 1 (plain int8 rows; made by the
/// code of commit edc9fdf: 6 images `unit_vectors(i, Q)`, `img/5.jpg` then
/// removed, one text) opens and reads as it was: newer builds lose no data.
#[test]
fn a_version_1_int8_index_still_reads() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1_int8");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    let index = Index::open(dir.path(), Some(&model())).unwrap();
    assert_eq!(index.manifest().format_version, 1);
    assert!(index.verify().is_ok(), "{}", index.verify());
    assert_eq!(index.stats().images, 5);
    for i in 0..5u64 {
        let info = index.image_by_path(&format!("img/{i}.jpg")).unwrap();
        let stored = index.image_vectors(info.image_id).unwrap();
        let err = stored
            .iter()
            .zip(unit_vectors(i, Q))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-2, "image {i}: max error {err}");
        let hits = index
            .search_images(&unit_vectors(i, Q)[..D], 1, &exact())
            .unwrap();
        assert_eq!(hits[0].paths, vec![format!("img/{i}.jpg")]);
    }
    let texts = index
        .search_texts(&unit_vectors(100, 1), 1, &exact())
        .unwrap();
    assert_eq!(texts[0].external_id.as_deref(), Some("t1"));
    // It takes new images, in its own layout.
    let mut w = index.writer().unwrap();
    w.add_image(record("img/new.jpg", "hnew"), &unit_vectors(50, Q), None)
        .unwrap();
    w.commit().unwrap();
    drop(w);
    drop(index);
    let index = Index::open(dir.path(), None).unwrap();
    assert!(index.verify().is_ok(), "{}", index.verify());
    let hits = index
        .search_images(&unit_vectors(50, Q)[D..2 * D], 1, &exact())
        .unwrap();
    assert_eq!(hits[0].paths, vec!["img/new.jpg"]);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The metadata of synthetic photo `i`: taken on day `i` of 2023 at noon (none for every
/// seventh), a Canon for even `i` and a Nikon for odd, and a place 0.01° further east
/// for each `i` along the equator (none for every fifth).
fn photo_of(i: u64) -> PhotoMeta {
    PhotoMeta {
        taken: (i % 7 != 3).then(|| TakenAt {
            local: (days_from_civil(2023, 1, 1) + i as i64) * 86_400 + 12 * 3600,
            nanos: 0,
            offset_minutes: None,
        }),
        make: Some(
            if i.is_multiple_of(2) {
                "Canon"
            } else {
                "NIKON CORPORATION"
            }
            .into(),
        ),
        model: Some(
            if i.is_multiple_of(2) {
                "Canon EOS R5"
            } else {
                "NIKON D850"
            }
            .into(),
        ),
        gps: (i % 5 != 4).then_some(Gps {
            lat: 0.0,
            lon: i as f64 * 0.01,
            alt: None,
        }),
        ..PhotoMeta::default()
    }
}

/// Which synthetic photos a filter keeps, by number.
type Keeps = Box<dyn Fn(u64) -> bool>;

#[test]
fn metadata_filters_keep_the_true_top_k_exactly_and_through_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let mut w = index.writer().unwrap();
    for i in 0..300u64 {
        let mut r = record(&format!("img/{i}.jpg"), &format!("h{i}"));
        r.photo = Some(photo_of(i));
        w.add_image(r, &unit_vectors(i, Q), None).unwrap();
    }
    w.commit().unwrap();
    let day = |d: i64| TakenAt {
        local: (days_from_civil(2023, 1, 1) + d) * 86_400,
        nanos: 0,
        offset_minutes: None,
    };
    // Each row: a filter, and which photos it keeps (checked against `photo_of`).
    let rows: Vec<(PhotoFilter, Keeps)> = vec![
        (
            PhotoFilter {
                taken_from: Some(day(100)),
                taken_until: Some(day(110)),
                ..PhotoFilter::default()
            },
            Box::new(|i| (100..110).contains(&i) && i % 7 != 3),
        ),
        (
            PhotoFilter {
                camera: Some("nikon d8".into()),
                ..PhotoFilter::default()
            },
            Box::new(|i| i % 2 == 1),
        ),
        (
            PhotoFilter {
                // 0.1° of longitude at the equator is 11.1 km: i in 0..=10, 11 km from 0.
                near: Some(Near {
                    lat: 0.0,
                    lon: 0.0,
                    km: 11.2,
                }),
                ..PhotoFilter::default()
            },
            Box::new(|i| i <= 10 && i % 5 != 4),
        ),
        (
            PhotoFilter {
                undated: true,
                camera: Some("CANON".into()),
                ..PhotoFilter::default()
            },
            Box::new(|i| i % 7 == 3 && i % 2 == 0),
        ),
    ];
    let query = unit_vectors(4242, 1);
    let everything = index.search_images(&query, 300, &exact()).unwrap();
    for (photo, keeps) in rows {
        let expected: Vec<_> = everything
            .iter()
            .filter(|h| keeps(h.image_id))
            .take(5)
            .cloned()
            .collect();
        assert!(!expected.is_empty(), "{photo:?}");
        let filter = Filter {
            photo: photo.clone(),
            ..Filter::default()
        };
        let exact = SearchParams {
            filter: Some(filter.clone()),
            ..exact()
        };
        assert_eq!(
            index.search_images(&query, 5, &exact).unwrap(),
            expected,
            "{photo:?}"
        );
        let allowed = (0..300).filter(|&i| keeps(i)).count();
        let deep = SearchParams {
            filter: Some(filter),
            candidates: allowed,
            ..ann()
        };
        assert_eq!(
            index.search_images(&query, 5, &deep).unwrap(),
            expected,
            "{photo:?}"
        );
    }
}

#[test]
fn set_photo_gives_an_indexed_image_its_metadata_durably() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = create(dir.path());
        let mut w = index.writer().unwrap();
        let id = w
            .add_image(record("a.jpg", "ha"), &unit_vectors(1, Q), None)
            .unwrap();
        w.commit().unwrap();
        assert_eq!(index.image(id).unwrap().photo, None);
        assert!(w.set_photo(id, Some(photo_of(1))));
        assert!(!w.set_photo(id + 100, Some(photo_of(1))));
        w.commit().unwrap();
        assert_eq!(index.image(id).unwrap().photo, Some(photo_of(1)));
    }
    let index = Index::open(dir.path(), Some(&model())).unwrap();
    let info = index.image_by_path("a.jpg").unwrap();
    assert_eq!(info.photo, Some(photo_of(1)));
    assert_eq!(info.content_hash, "ha");
}

/// `vectors` moved by `spread` times other unit vectors (seeded by `seed`), each slot
/// normalised again: a near-copy of an image.
fn moved(vectors: &[f32], seed: u64, spread: f32) -> Vec<f32> {
    let mut v = vectors.to_vec();
    v.iter_mut()
        .zip(unit_vectors(seed, Q))
        .for_each(|(x, n)| *x += spread * n);
    v.chunks_exact_mut(D).for_each(normalise);
    v
}

#[test]
fn near_duplicates_group_copies_and_refuse_a_chain_by_transitivity() {
    let dir = tempfile::tempdir().unwrap();
    let index = create(dir.path());
    let mut w = index.writer().unwrap();
    let mut add = |path: &str, vectors: &[f32]| {
        w.add_image(record(path, path), vectors, None).unwrap();
    };
    for i in 0..150 {
        add(&format!("img/{i}.jpg"), &unit_vectors(i, Q));
    }
    // Two copies of image 10, one of image 50 (a re-encode, a resize: small moves).
    add("copies/10a.jpg", &moved(&unit_vectors(10, Q), 1010, 0.1));
    add("copies/10b.jpg", &moved(&unit_vectors(10, Q), 1011, 0.1));
    add("copies/50a.jpg", &moved(&unit_vectors(50, Q), 1050, 0.1));
    // A chain: b is a's edit, c is b's edit; a and c are further apart.
    let a = unit_vectors(9000, Q);
    let b = moved(&a, 9001, 0.3);
    let c = moved(&b, 9002, 0.3);
    add("chain/a.jpg", &a);
    add("chain/b.jpg", &b);
    add("chain/c.jpg", &c);
    w.commit().unwrap();
    drop(w);
    let chamfer = |x: &[f32], y: &[f32]| qseek_index::max_sim::chamfer(x, y, D);
    let (ab, bc, ac) = (chamfer(&a, &b), chamfer(&b, &c), chamfer(&a, &c));
    // A threshold that a–b and b–c pass and a–c fails.
    let threshold = (ab.min(bc) + ac) / 2.0;
    assert!(ab.min(bc) > threshold && ac < threshold, "{ab} {bc} {ac}");
    let groups = |exact: bool| {
        let params = DupParams {
            threshold,
            exact,
            exact_below: 0,
            ..DupParams::default()
        };
        let report = index.near_duplicates(&params).unwrap();
        assert_eq!(report.exact, exact);
        assert_eq!(report.images, 156);
        let mut groups: Vec<Vec<String>> = report
            .groups
            .iter()
            .map(|g| {
                for i in 0..g.members.len() {
                    for j in 0..g.members.len() {
                        assert!(g.similarity(i, j) >= threshold, "{g:?}");
                    }
                }
                let mut paths: Vec<String> = g
                    .members
                    .iter()
                    .map(|&id| index.image(id).unwrap().paths[0].path.clone())
                    .collect();
                paths.sort();
                paths
            })
            .collect();
        groups.sort();
        groups
    };
    let exact = groups(true);
    // The chain's middle joins the one it is nearer; a and c never share a group.
    let chain = if ab >= bc {
        ["chain/a.jpg", "chain/b.jpg"]
    } else {
        ["chain/b.jpg", "chain/c.jpg"]
    };
    assert_eq!(
        exact,
        vec![
            chain.to_vec(),
            vec!["copies/10a.jpg", "copies/10b.jpg", "img/10.jpg"],
            vec!["copies/50a.jpg", "img/50.jpg"],
        ]
    );
    assert_eq!(groups(false), exact, "through the graph");
    // Under a folder: only its images are scanned.
    let report = index
        .near_duplicates(&DupParams {
            threshold,
            path_prefix: Some("copies/".into()),
            ..DupParams::default()
        })
        .unwrap();
    assert_eq!(report.images, 3);
    assert_eq!(report.groups.len(), 1);
    assert_eq!(report.groups[0].members.len(), 2);
}
