//! Reading indexed photos back: only from their indexed paths, with their hash checked,
//! and, for a server, only inside the index's roots.

use super::*;

/// The canonical folders and files that reads of indexed files must stay in: the
/// index's recorded roots and [`SearchSettings::confine_reads`]'s folders. `None`
/// (read anywhere): the command line, or an index that records no roots (made before
/// qseek kept them).
pub fn read_roots(c: &Collection, settings: &SearchSettings) -> Option<Vec<PathBuf>> {
    let extra = settings.confine_reads.as_ref()?;
    let recorded = c.index.roots();
    if recorded.is_empty() {
        return None;
    }
    let all = recorded
        .iter()
        .map(PathBuf::from)
        .chain(extra.iter().cloned());
    Some(all.filter_map(|p| p.canonicalize().ok()).collect())
}

/// Where to read an indexed `path` from: itself, or, within `roots`, its canonical
/// path if that lies inside one of them (a link swapped in after indexing may not
/// lead out of them).
pub fn confined(path: &Path, roots: Option<&[PathBuf]>) -> Result<PathBuf> {
    let Some(roots) = roots else {
        return Ok(path.to_path_buf());
    };
    let canonical = path.canonicalize().map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if roots.iter().any(|r| canonical.starts_with(r)) {
        Ok(canonical)
    } else {
        Err(Error::OutsideRoots {
            path: path.to_path_buf(),
        })
    }
}

/// The bytes of an indexed image, from the first of its paths that still holds them
/// (and, with `roots`, lies inside them: [`confined`]).
pub fn read_indexed(
    info: &qseek_index::ImageInfo,
    roots: Option<&[PathBuf]>,
) -> Result<(PathBuf, Vec<u8>)> {
    let mut last = None;
    for p in &info.paths {
        let read = confined(Path::new(&p.path), roots).and_then(|at| {
            std::fs::read(&at).map_err(|source| Error::Io {
                path: PathBuf::from(&p.path),
                source,
            })
        });
        match read {
            Ok(bytes) if content_hash(&bytes) == info.content_hash => {
                return Ok((PathBuf::from(&p.path), bytes))
            }
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(Error::NotFound(NotFound::Image { id: info.image_id })))
}
