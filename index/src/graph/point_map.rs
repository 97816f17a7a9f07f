//! The one place that knows which item a graph point belongs to.

/// What an HNSW point stands for: a vector row (of the image or text vector
/// file) and which of that row's graph vectors it is.
///
/// A row, not an image id: a replaced or removed image leaves its row behind
/// as a tombstone, and the row table (`row → Option<image id>`) says whether a
/// point is live in one lookup. For an image the slot is the index of one of
/// its `graph_points_per_image` centroids (the query slot itself when every
/// query vector is in the graph); for a text it is always 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PointTarget {
    /// Row in the image (or text) vector file.
    pub row: u64,
    /// Graph vector of that row.
    pub slot: u16,
}

/// Maps HNSW point ids (the `usize` "data id" hnsw_rs stores) to [`PointTarget`]s.
///
/// Point ids are dense and assigned in insertion order, so the map is a vector
/// indexed by point id. It is rebuilt with the graph and never written to disk:
/// ids of removed items stay in the map (tombstones) until `compact` rebuilds
/// the graph, and searches skip points whose item is no longer live.
#[derive(Debug, Default, Clone)]
pub struct PointMap {
    targets: Vec<PointTarget>,
}

impl PointMap {
    /// Assigns the next point id to `target`.
    pub fn push(&mut self, target: PointTarget) -> usize {
        self.targets.push(target);
        self.targets.len() - 1
    }

    /// The target of point `id`, if that id was assigned.
    pub fn get(&self, id: usize) -> Option<PointTarget> {
        self.targets.get(id).copied()
    }

    /// Number of points assigned, live or not.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether no point was assigned.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// All targets in point-id order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, PointTarget)> + '_ {
        self.targets.iter().copied().enumerate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_in_insertion_order() {
        let mut map = PointMap::default();
        let a = PointTarget { row: 7, slot: 0 };
        let b = PointTarget { row: 7, slot: 1 };
        assert_eq!(map.push(a), 0);
        assert_eq!(map.push(b), 1);
        assert_eq!(map.get(1), Some(b));
        assert_eq!(map.get(2), None);
        assert_eq!(map.len(), 2);
    }
}
