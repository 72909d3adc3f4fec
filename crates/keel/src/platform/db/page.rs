//! One page of a cursor-paged list, as the `keel_list_*` functions return it:
//! `{"<items>": [...], "next_cursor": "<position>" | null}`.

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Reads the list under whichever key holds it (`tenants`, `documents`, …):
/// the functions name their lists after what they hold.
impl<'de, T: DeserializeOwned> Deserialize<'de> for Page<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut object = Map::<String, Value>::deserialize(deserializer)?;
        let next_cursor = match object.remove("next_cursor") {
            None | Some(Value::Null) => None,
            Some(Value::String(cursor)) => Some(cursor),
            Some(other) => Some(other.to_string()),
        };
        let (_, items) = object
            .into_iter()
            .find(|(_, value)| value.is_array())
            .ok_or_else(|| D::Error::custom("a page needs one list of items"))?;
        let items = serde_json::from_value(items).map_err(D::Error::custom)?;
        Ok(Page { items, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_reads_its_list_whatever_it_is_called_and_any_cursor() {
        let page: Page<u32> =
            serde_json::from_str(r#"{"tenants":[1,2],"next_cursor":"2"}"#).unwrap();
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_cursor.as_deref(), Some("2"));
        let page: Page<u32> = serde_json::from_str(r#"{"tasks":[],"next_cursor":17}"#).unwrap();
        assert_eq!(page.next_cursor.as_deref(), Some("17"));
        let last: Page<u32> = serde_json::from_str(r#"{"documents":[3]}"#).unwrap();
        assert_eq!(last.next_cursor, None);
        assert!(serde_json::from_str::<Page<u32>>(r#"{"next_cursor":null}"#).is_err());
    }
}
