//! `key`: one column or a list of them, in key order.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `key` is a column name or a list of them.
pub(super) fn key_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)))
            .build(),
    )
}

/// The key: written as a single string or a list; always a list inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumns(pub Vec<String>);

impl Serialize for KeyColumns {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for KeyColumns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("key must be a column name or a list of column names")
        })? {
            OneOrMany::One(column) => Ok(KeyColumns(vec![column])),
            OneOrMany::Many(columns) => Ok(KeyColumns(columns)),
        }
    }
}
