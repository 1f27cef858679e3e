//! The declared schema of Parquet output: flat, typed columns. It is part of every
//! build; encoding and decoding Parquet files needs the `parquet` feature.

/// The type of a Parquet column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetType {
    /// 64-bit signed integers (`INT64`); JSON integers in range.
    Int64,
    /// 64-bit floating point numbers (`DOUBLE`); any JSON number.
    Float64,
    /// UTF-8 strings (`BYTE_ARRAY` annotated `UTF8`); JSON strings.
    Utf8,
    /// Booleans (`BOOLEAN`); JSON `true` and `false`.
    Bool,
}

/// One column of a [`ParquetSchema`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetColumn {
    /// The column name, which is also the record's field name.
    pub name: String,
    /// The column's type.
    pub kind: ParquetType,
    /// Whether the column accepts nulls (a missing field or a JSON `null`).
    pub nullable: bool,
}

/// The flat schema of a Parquet sink's files.
///
/// Records are serialized with serde to JSON objects; each field must be a column of
/// the schema with a value of the column's type. A field that is not a column, a value
/// of another type, or a missing field in a column that is not nullable is an error
/// (the sink stops rather than drop data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetSchema {
    /// The columns, in file order.
    pub columns: Vec<ParquetColumn>,
}

impl ParquetSchema {
    /// A schema of required (non-nullable) columns. Make a column nullable by setting
    /// its `nullable` field.
    ///
    /// # Examples
    ///
    /// ```
    /// use weir_connectors::objects::{ParquetSchema, ParquetType};
    /// let mut schema = ParquetSchema::new(&[("word", ParquetType::Utf8), ("count", ParquetType::Int64)]);
    /// schema.columns[1].nullable = true;
    /// assert_eq!(schema.columns[0].name, "word");
    /// assert!(!schema.columns[0].nullable);
    /// assert!(schema.columns[1].nullable);
    /// ```
    pub fn new(columns: &[(&str, ParquetType)]) -> Self {
        ParquetSchema {
            columns: columns
                .iter()
                .map(|(name, kind)| ParquetColumn {
                    name: name.to_string(),
                    kind: *kind,
                    nullable: false,
                })
                .collect(),
        }
    }

    /// Checks the schema: at least one column, unique non-empty names.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.columns.is_empty() {
            return Err("the schema has no columns".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.columns {
            if c.name.is_empty() {
                return Err("a column has an empty name".into());
            }
            if !seen.insert(c.name.as_str()) {
                return Err(format!("column `{}` is declared twice", c.name));
            }
        }
        Ok(())
    }
}
