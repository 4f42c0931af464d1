//! A sorted map from `String` keys for the core's small keyed collections (rooms of a client,
//! connections in a room, typists).
//!
//! Why not `BTreeMap`: every `BTreeMap<K, V>` instantiation pulls several kilobytes of node code
//! into the wasm module, and the core has a handful of them; these collections hold tens of
//! entries, where a binary search is as fast and costs a fraction of the bytes.
//!
//! Why the values are boxed: an entry is then a `String` and a pointer whatever `V` is, so the
//! search and `Vec<(String, Box<V>)>`'s insert and remove compile to the same code for every
//! map, and wasm-opt keeps one copy (unboxed, each value type brought its own). Iteration is in
//! key order, like `BTreeMap`.
//!
//! No indexing: a bounds-check panic formats its message, and the module carries no formatting
//! code (see `scripts/size-report`).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallMap<V> {
    /// Sorted by key, keys unique.
    entries: Vec<(String, Box<V>)>,
}

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> SmallMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Where `key` is (`Err`: where it would go).
    fn search(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        let i = self.search(key).ok()?;
        self.entries.get(i).map(|(_, v)| &**v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let i = self.search(key).ok()?;
        self.entries.get_mut(i).map(|(_, v)| &mut **v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.search(key).is_ok()
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.insert_boxed(key, Box::new(value)).map(|old| *old)
    }

    /// Inserts or replaces a boxed value: pointer moves only, so one body serves every `V`.
    fn insert_boxed(&mut self, key: String, value: Box<V>) -> Option<Box<V>> {
        let i = match self.search(&key) {
            // `get_mut(i).map(replace)` would drop `value` on its (impossible) `None` path: a
            // call to `V`'s drop glue, which makes each `V`'s copy of this body different.
            Ok(i) => match self.entries.get_mut(i) {
                Some((_, v)) => return Some(core::mem::replace(v, value)),
                None => i,
            },
            Err(i) => i,
        };
        self.entries.insert(i, (key, value));
        None
    }

    /// Removes `key`'s entry; whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        self.remove_entry(key).is_some()
    }

    /// Pointer moves only, like [`SmallMap::insert_boxed`].
    fn remove_entry(&mut self, key: &str) -> Option<(String, Box<V>)> {
        let i = self.search(key).ok()?;
        Some(self.entries.remove(i))
    }

    /// The value for `key`, inserting `make()` first if absent (`BTreeMap::entry().or_insert_with`).
    /// Always `Some`.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> Option<&mut V> {
        let i = match self.search(key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key.into(), Box::new(make())));
                i
            }
        };
        self.entries.get_mut(i).map(|(_, v)| &mut **v)
    }

    /// The `i`-th entry in key order.
    pub fn entry_at_mut(&mut self, i: usize) -> Option<(&String, &mut V)> {
        self.entries.get_mut(i).map(|(k, v)| (&*k, &mut **v))
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&String, &mut V) -> bool) {
        // Removed one by one with the `Vec::remove` that `remove` compiles anyway (one body for
        // every map, like the insert): `Vec::retain_mut` would add its own. The maps are short.
        let mut i = 0;
        while let Some((k, v)) = self.entries.get_mut(i) {
            if keep(k, v) {
                i += 1;
            } else {
                self.entries.remove(i);
            }
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.entries.iter().map(|(k, v)| (k, &**v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, &mut **v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| &**v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| &mut **v)
    }
}

#[cfg(test)]
mod tests {
    use super::SmallMap;

    #[test]
    fn behaves_like_an_ordered_map() {
        let mut m = SmallMap::new();
        assert_eq!(m.insert("b".to_string(), 2), None);
        assert_eq!(m.insert("a".to_string(), 1), None);
        assert_eq!(m.insert("c".to_string(), 3), None);
        assert_eq!(m.insert("b".to_string(), 20), Some(2));
        assert_eq!(
            m.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
            [("a", 1), ("b", 20), ("c", 3)]
        );
        assert_eq!(m.get("b"), Some(&20));
        assert!(m.contains_key("c"));
        *m.get_or_insert_with("d", || 0).unwrap() += 4;
        *m.get_or_insert_with("d", || 100).unwrap() += 1;
        assert_eq!(m.get("d"), Some(&5));
        assert!(m.remove("a"));
        assert!(!m.remove("a"));
        m.retain(|_, v| *v > 4);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
            [("b", 20), ("d", 5)]
        );
        m.retain(|k, _| k != "b");
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [5]);
    }
}
