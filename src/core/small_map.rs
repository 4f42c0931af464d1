//! A sorted map from `String` keys for the core's small keyed collections (rooms of a client,
//! connections in a room, typists).
//!
//! Why not `BTreeMap`: every `BTreeMap<K, V>` instantiation pulls several kilobytes of node code
//! into the wasm module, and the core has a handful of them; these collections hold tens of
//! entries, where a binary search is as fast and costs a fraction of the bytes.
//!
//! Why keys and values in two vectors, and values boxed: the key search, and inserting and
//! removing keys, is then one non-generic body shared by every map, and moving values around is
//! moving pointers, so `Vec<Box<V>>`'s insert and remove compile to the same code for every `V`
//! and wasm-opt keeps one copy (unboxed, each value type brought its own). Iteration is in key
//! order, like `BTreeMap`.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallMap<V> {
    /// Sorted, unique.
    keys: Vec<String>,
    /// `values[i]` belongs to `keys[i]`.
    values: Vec<Box<V>>,
}

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        Self { keys: Vec::new(), values: Vec::new() }
    }
}

/// Where `key` is in the sorted `keys` (`Err`: where it would go).
#[inline(never)]
fn search(keys: &[String], key: &str) -> Result<usize, usize> {
    keys.binary_search_by(|k| k.as_str().cmp(key))
}

impl<V> SmallMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, key: &str) -> Option<usize> {
        search(&self.keys, key).ok()
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.values.get(self.find(key)?).map(|v| &**v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let i = self.find(key)?;
        self.values.get_mut(i).map(|v| &mut **v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match search(&self.keys, &key) {
            Ok(i) => self.values.get_mut(i).map(|v| core::mem::replace(&mut **v, value)),
            Err(i) => {
                self.keys.insert(i, key);
                self.values.insert(i, Box::new(value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.find(key)?;
        self.keys.remove(i);
        Some(*self.values.remove(i))
    }

    /// The value for `key`, inserting `make()` first if absent (`BTreeMap::entry().or_insert_with`).
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let i = match search(&self.keys, key) {
            Ok(i) => i,
            Err(i) => {
                self.keys.insert(i, key.into());
                self.values.insert(i, Box::new(make()));
                i
            }
        };
        &mut self.values[i]
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&String, &mut V) -> bool) {
        let mut i = 0;
        while let (Some(k), Some(v)) = (self.keys.get(i), self.values.get_mut(i)) {
            if keep(k, v) {
                i += 1;
            } else {
                self.keys.remove(i);
                self.values.remove(i);
            }
        }
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.keys.iter().zip(self.values.iter().map(|v| &**v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut V)> {
        self.keys.iter().zip(self.values.iter_mut().map(|v| &mut **v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.values.iter().map(|v| &**v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.values.iter_mut().map(|v| &mut **v)
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
        assert_eq!(m.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), [("a", 1), ("b", 20), ("c", 3)]);
        assert_eq!(m.get("b"), Some(&20));
        assert!(m.contains_key("c"));
        *m.get_or_insert_with("d", || 0) += 4;
        *m.get_or_insert_with("d", || 100) += 1;
        assert_eq!(m.get("d"), Some(&5));
        assert_eq!(m.remove("a"), Some(1));
        assert_eq!(m.remove("a"), None);
        m.retain(|_, v| *v > 4);
        assert_eq!(m.len(), 2);
        assert_eq!(m.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), [("b", 20), ("d", 5)]);
        m.retain(|k, _| k != "b");
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [5]);
    }
}
