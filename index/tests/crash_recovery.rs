//! SIGKILL a writer at many points; reopening must give exactly the state of
//! the last completed commit.
//!
//! The test binary re-runs itself as the writer (`crash_child`: an ignored test the
//! parent runs by name, its folder given by an environment variable). The child's
//! state after commit `c` is a pure function of `c` ([`expected_paths`],
//! [`expected_texts`]), so the parent can tell which commit it finds on reopen and
//! check that it is the last one the child printed, or the next one (finished but not
//! yet printed).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use qseek_index::{Index, VectorDtype};

const CHILD_ENV: &str = "QSEEK_INDEX_CRASH_CHILD_DIR";
const ROUNDS: u64 = 16;
const MAX_COMMITS: u64 = 400;

/// Paths after commit `c`: each commit adds `c{i}/p0..p2` (p2 a copy of p1's
/// bytes) and every third commit removes `p0` of two commits before.
fn expected_paths(c: u64) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for i in 1..=c {
        for j in 0..3 {
            set.insert(format!("c{i}/p{j}.jpg"));
        }
        if i % 3 == 0 {
            set.remove(&format!("c{}/p0.jpg", i - 2));
        }
    }
    set
}

/// Texts after commit `c`: one per commit, and every fourth commit removes the previous one.
fn expected_texts(c: u64) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for i in 1..=c {
        set.insert(format!("text {i}"));
        if i % 4 == 0 {
            set.remove(&format!("text {}", i - 1));
        }
    }
    set
}

fn state_of(index: &Index) -> (BTreeSet<String>, BTreeSet<String>) {
    (
        index.paths().into_iter().collect(),
        index.texts().into_iter().map(|t| t.text).collect(),
    )
}

/// Which commit the index is at, if its state is one of them.
fn find_commit(index: &Index) -> Option<u64> {
    let state = state_of(index);
    (0..=MAX_COMMITS).find(|&c| state == (expected_paths(c), expected_texts(c)))
}

fn vectors_of(i: u64, j: u64) -> Vec<f32> {
    unit_vectors(i * 10 + j, Q)
}

/// The writer: continues from whatever commit it finds, forever (until killed). Not a
/// test of its own, hence `ignore`: the child process of
/// [`sigkill_at_any_point_reopens_to_the_last_completed_commit`], which runs it with
/// `--ignored --exact crash_child` and the index folder in [`CHILD_ENV`]. Without that
/// variable (e.g. `cargo test -- --include-ignored`) it does nothing.
#[test]
#[ignore = "the child process of sigkill_at_any_point_reopens_to_the_last_completed_commit"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let index = if dir.join("manifest.json").exists() {
        Index::open(dir, Some(&model())).unwrap()
    } else {
        Index::create(dir, manifest(VectorDtype::Int8)).unwrap()
    };
    let start = find_commit(&index).expect("child opened an index that matches no commit");
    let mut w = index.writer().unwrap();
    for i in start + 1..=MAX_COMMITS {
        for j in 0..2 {
            w.add_image(
                record(&format!("c{i}/p{j}.jpg"), &format!("h{i}-{j}")),
                &vectors_of(i, j),
                None,
            )
            .unwrap();
        }
        w.add_path(record(&format!("c{i}/p2.jpg"), &format!("h{i}-1")))
            .unwrap();
        if i % 3 == 0 {
            w.remove_path(&format!("c{}/p0.jpg", i - 2)).unwrap();
        }
        w.add_text(&format!("text {i}"), None, &unit_vectors(5000 + i, 1))
            .unwrap();
        if i % 4 == 0 {
            let id = index
                .texts()
                .into_iter()
                .find(|t| t.text == format!("text {}", i - 1))
                .unwrap();
            w.remove_text(id.text_id);
        }
        w.commit().unwrap();
        println!("committed {i}");
        if i % 4 == 2 {
            println!("compacting {i}");
            w.compact().unwrap();
            println!("compacted {i}");
        }
    }
}

/// The commit number a child's output line reports. libtest prints
/// `test crash_child ... ` without a newline before the test runs, so the
/// first report shares its line.
fn committed_in(line: &str) -> Option<u64> {
    let (_, n) = line.rsplit_once("committed ")?;
    Some(n.trim().parse().unwrap())
}

#[test]
fn sigkill_at_any_point_reopens_to_the_last_completed_commit() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut last_seen = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Even rounds kill during or after a commit, odd ones during a compaction.
        let trigger = if round % 2 == 0 {
            "committed"
        } else {
            "compacting"
        };
        let wanted = 1 + round % 3;
        let mut seen = 0;
        let mut committed = last_seen;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(c) = committed_in(&line) {
                committed = c;
            }
            if line.contains(trigger) {
                seen += 1;
                if seen == wanted {
                    break;
                }
            }
        }
        assert_eq!(
            seen, wanted,
            "round {round}: the child ended after {seen} of {wanted} {trigger:?} lines (did it run?)"
        );
        // Spread the kill over the next commit's phases: 0 to ~25 ms.
        std::thread::sleep(Duration::from_micros((round * 7919) % 25_000));
        child.kill().unwrap();
        child.wait().unwrap();
        for line in lines {
            if let Some(c) = committed_in(&line.unwrap()) {
                committed = c;
            }
        }

        let index = Index::open(dir.path(), Some(&model())).unwrap();
        let report = index.verify();
        assert!(report.is_ok(), "round {round}: {report}");
        let found =
            find_commit(&index).unwrap_or_else(|| panic!("round {round}: state matches no commit"));
        assert!(
            found == committed || found == committed + 1,
            "round {round}: child printed commit {committed}, reopened index is at {found}"
        );
        // Vectors survived bit for bit (up to int8 quantisation).
        if found > 0 {
            let id = index
                .image_by_path(&format!("c{found}/p1.jpg"))
                .unwrap()
                .image_id;
            let stored = index.image_vectors(id).unwrap();
            let err = stored
                .iter()
                .zip(vectors_of(found, 1))
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < 0.01, "round {round}: stored vectors differ by {err}");
        }
        last_seen = found;
    }
    assert!(
        last_seen > ROUNDS / 2,
        "the child made too little progress: {last_seen}"
    );
}
