//! Parquet encoding of a sink's rows: a declared schema of flat, typed columns, rows
//! checked against it as they arrive, and one file per epoch and worker.
//!
//! Parquet in memory, read back with the `parquet` crate's own reader:
//!
//! ```
//! use parquet::file::reader::{FileReader, SerializedFileReader};
//! use parquet::record::RowAccessor;
//! use weir_connectors::objects::*;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Clone)]
//! struct Count { word: String, count: u64 }
//!
//! let schema = ParquetSchema::new(&[("word", ParquetType::Utf8), ("count", ParquetType::Int64)]);
//! let opts = ObjectSinkOptions { url: "memory://doc-parquet/out".into(), format: ObjectFormat::Parquet(schema) };
//! weir_runtime::run(weir_runtime::JobConfig::thread("doc-parquet"), move |job| {
//!     let counts = vec![
//!         Count { word: "weir".into(), count: 2 },
//!         Count { word: "river".into(), count: 5 },
//!     ];
//!     job.source("in", weir_runtime::testing::items(counts))?.sink("counts", opts.clone())
//! }).unwrap();
//! let objects = read_committed("memory://doc-parquet/out", "counts").unwrap();
//! assert_eq!(objects.len(), 1);
//! let reader = SerializedFileReader::new(objects[0].bytes.clone()).unwrap();
//! assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
//! let mut rows: Vec<(String, i64)> = reader.get_row_iter(None).unwrap()
//!     .map(|r| { let r = r.unwrap(); (r.get_string(0).unwrap().clone(), r.get_long(1).unwrap()) })
//!     .collect();
//! rows.sort();
//! assert_eq!(rows, vec![("river".to_string(), 5), ("weir".to_string(), 2)]);
//! ```

use std::sync::Arc;

use parquet::basic::{Compression, ConvertedType, Repetition, Type as PhysicalType};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::types::Type;

use super::schema::{ParquetColumn, ParquetSchema, ParquetType};

impl ParquetSchema {
    fn parquet_type(&self) -> parquet::errors::Result<Arc<Type>> {
        let fields = self
            .columns
            .iter()
            .map(|c| {
                let physical = match c.kind {
                    ParquetType::Int64 => PhysicalType::INT64,
                    ParquetType::Float64 => PhysicalType::DOUBLE,
                    ParquetType::Utf8 => PhysicalType::BYTE_ARRAY,
                    ParquetType::Bool => PhysicalType::BOOLEAN,
                };
                let mut b = Type::primitive_type_builder(&c.name, physical).with_repetition(
                    if c.nullable {
                        Repetition::OPTIONAL
                    } else {
                        Repetition::REQUIRED
                    },
                );
                if c.kind == ParquetType::Utf8 {
                    b = b.with_converted_type(ConvertedType::UTF8);
                }
                b.build().map(Arc::new)
            })
            .collect::<parquet::errors::Result<Vec<_>>>()?;
        Ok(Arc::new(
            Type::group_type_builder("weir")
                .with_fields(fields)
                .build()?,
        ))
    }
}

/// The values of one column, buffered until the next row group is written.
enum Values {
    Int64(Vec<i64>),
    Float64(Vec<f64>),
    Utf8(Vec<ByteArray>),
    Bool(Vec<bool>),
}

impl Values {
    fn new(kind: ParquetType) -> Self {
        match kind {
            ParquetType::Int64 => Values::Int64(Vec::new()),
            ParquetType::Float64 => Values::Float64(Vec::new()),
            ParquetType::Utf8 => Values::Utf8(Vec::new()),
            ParquetType::Bool => Values::Bool(Vec::new()),
        }
    }

    fn clear(&mut self) {
        match self {
            Values::Int64(v) => v.clear(),
            Values::Float64(v) => v.clear(),
            Values::Utf8(v) => v.clear(),
            Values::Bool(v) => v.clear(),
        }
    }
}

/// Rows per row group: bounds the values held in memory before they are encoded.
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// One epoch's Parquet file being written into memory.
pub(crate) struct ParquetFile {
    schema: ParquetSchema,
    writer: SerializedFileWriter<Vec<u8>>,
    values: Vec<Values>,
    /// Definition levels per column (1 = a value, 0 = null), for nullable columns.
    levels: Vec<Vec<i16>>,
    rows: usize,
}

impl ParquetFile {
    pub(crate) fn new(schema: &ParquetSchema) -> parquet::errors::Result<Self> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer =
            SerializedFileWriter::new(Vec::new(), schema.parquet_type()?, Arc::new(props))?;
        Ok(ParquetFile {
            schema: schema.clone(),
            writer,
            values: schema.columns.iter().map(|c| Values::new(c.kind)).collect(),
            levels: vec![Vec::new(); schema.columns.len()],
            rows: 0,
        })
    }

    /// Adds a row; on error nothing is added.
    pub(crate) fn push(&mut self, row: &serde_json::Value) -> Result<(), String> {
        let serde_json::Value::Object(fields) = row else {
            return Err(format!(
                "a record must serialize to a JSON object with the schema's columns, not {row}"
            ));
        };
        if let Some(extra) = fields
            .keys()
            .find(|k| !self.schema.columns.iter().any(|c| &c.name == *k))
        {
            return Err(format!(
                "field `{extra}` is not a column of the schema (columns: {})",
                self.schema
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // Check every value before buffering any, so that a bad row leaves no trace.
        let mut checked: Vec<Option<Cell>> = Vec::with_capacity(self.schema.columns.len());
        for c in &self.schema.columns {
            let value = fields.get(&c.name).unwrap_or(&serde_json::Value::Null);
            checked.push(cell(c, value)?);
        }
        for (i, cell) in checked.into_iter().enumerate() {
            if self.schema.columns[i].nullable {
                self.levels[i].push(i16::from(cell.is_some()));
            }
            match (&mut self.values[i], cell) {
                (Values::Int64(v), Some(Cell::Int64(x))) => v.push(x),
                (Values::Float64(v), Some(Cell::Float64(x))) => v.push(x),
                (Values::Utf8(v), Some(Cell::Utf8(x))) => v.push(ByteArray::from(x.into_bytes())),
                (Values::Bool(v), Some(Cell::Bool(x))) => v.push(x),
                (_, None) => {}
                _ => unreachable!("cells are checked against their column"),
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Whether a row group is due.
    pub(crate) fn is_full(&self) -> bool {
        self.rows >= ROW_GROUP_ROWS
    }

    /// Encodes the buffered rows as a row group.
    pub(crate) fn flush(&mut self) -> parquet::errors::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let mut i = 0;
        while let Some(mut column) = group.next_column()? {
            let levels = self.schema.columns[i]
                .nullable
                .then_some(self.levels[i].as_slice());
            match &self.values[i] {
                Values::Int64(v) => {
                    column.typed::<Int64Type>().write_batch(v, levels, None)?;
                }
                Values::Float64(v) => {
                    column.typed::<DoubleType>().write_batch(v, levels, None)?;
                }
                Values::Utf8(v) => {
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(v, levels, None)?;
                }
                Values::Bool(v) => {
                    column.typed::<BoolType>().write_batch(v, levels, None)?;
                }
            }
            column.close()?;
            self.values[i].clear();
            self.levels[i].clear();
            i += 1;
        }
        group.close()?;
        self.rows = 0;
        Ok(())
    }

    /// The whole file.
    pub(crate) fn finish(mut self) -> parquet::errors::Result<Vec<u8>> {
        self.flush()?;
        self.writer.into_inner()
    }
}

enum Cell {
    Int64(i64),
    Float64(f64),
    Utf8(String),
    Bool(bool),
}

/// Checks `value` against column `c`; `None` is a null.
fn cell(c: &ParquetColumn, value: &serde_json::Value) -> Result<Option<Cell>, String> {
    use serde_json::Value;
    let wrong = |what: &str| {
        format!(
            "column `{}` ({:?}{}) cannot hold {what} {value}",
            c.name,
            c.kind,
            if c.nullable { ", nullable" } else { "" }
        )
    };
    Ok(Some(match (c.kind, value) {
        (_, Value::Null) if c.nullable => return Ok(None),
        (_, Value::Null) => return Err(wrong("a missing or null value")),
        (ParquetType::Int64, Value::Number(n)) => {
            Cell::Int64(n.as_i64().ok_or_else(|| wrong("the number"))?)
        }
        (ParquetType::Float64, Value::Number(n)) => {
            Cell::Float64(n.as_f64().ok_or_else(|| wrong("the number"))?)
        }
        (ParquetType::Utf8, Value::String(s)) => Cell::Utf8(s.clone()),
        (ParquetType::Bool, Value::Bool(b)) => Cell::Bool(*b),
        _ => return Err(wrong("the value")),
    }))
}

/// Decodes a Parquet file into one JSON object per row.
pub(crate) fn decode(bytes: bytes::Bytes) -> parquet::errors::Result<Vec<serde_json::Value>> {
    let reader = SerializedFileReader::new(bytes)?;
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let object: serde_json::Map<String, serde_json::Value> = row
            .get_column_iter()
            .map(|(name, field)| (name.clone(), field_to_json(field)))
            .collect();
        rows.push(serde_json::Value::Object(object));
    }
    Ok(rows)
}

fn field_to_json(field: &Field) -> serde_json::Value {
    use serde_json::Value;
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => Value::from(*x),
        Field::Short(x) => Value::from(*x),
        Field::Int(x) => Value::from(*x),
        Field::Long(x) => Value::from(*x),
        Field::UByte(x) => Value::from(*x),
        Field::UShort(x) => Value::from(*x),
        Field::UInt(x) => Value::from(*x),
        Field::ULong(x) => Value::from(*x),
        Field::Float(x) => Value::from(f64::from(*x)),
        Field::Double(x) => Value::from(*x),
        Field::Str(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> ParquetSchema {
        let mut s = ParquetSchema::new(&[
            ("word", ParquetType::Utf8),
            ("count", ParquetType::Int64),
            ("share", ParquetType::Float64),
            ("seen", ParquetType::Bool),
        ]);
        s.columns[2].nullable = true;
        s
    }

    #[test]
    fn rows_round_trip_across_row_groups_with_nulls() {
        let mut f = ParquetFile::new(&schema()).unwrap();
        let mut expected = Vec::new();
        for i in 0..(ROW_GROUP_ROWS as i64 + 10) {
            let row = if i % 3 == 0 {
                json!({"word": format!("w{i}"), "count": i, "share": null, "seen": i % 2 == 0})
            } else {
                json!({"word": format!("w{i}"), "count": i, "share": i as f64 / 2.0, "seen": i % 2 == 0})
            };
            f.push(&row).unwrap();
            if f.is_full() {
                f.flush().unwrap();
            }
            expected.push(row);
        }
        let rows = decode(f.finish().unwrap().into()).unwrap();
        assert_eq!(rows.len(), expected.len());
        assert_eq!(rows, expected);
    }

    #[test]
    fn rows_that_do_not_fit_are_refused_and_leave_no_trace() {
        let mut f = ParquetFile::new(&schema()).unwrap();
        let bad = [
            json!({"word": "a", "count": 1, "seen": true, "extra": 1}),
            json!({"word": "a", "count": "1", "seen": true}),
            json!({"word": "a", "count": u64::MAX, "seen": true}),
            json!({"word": "a", "seen": true}),
            json!([1, 2]),
        ];
        for row in &bad {
            assert!(f.push(row).is_err(), "{row}");
        }
        let err = f.push(&bad[0]).unwrap_err();
        assert!(err.contains("`extra`"), "{err}");
        f.push(&json!({"word": "ok", "count": 2, "seen": false}))
            .unwrap();
        let rows = decode(f.finish().unwrap().into()).unwrap();
        assert_eq!(
            rows,
            vec![json!({"word": "ok", "count": 2, "share": null, "seen": false})]
        );
        assert!(ParquetSchema::new(&[]).check().is_err());
        assert!(
            ParquetSchema::new(&[("a", ParquetType::Bool), ("a", ParquetType::Bool)])
                .check()
                .is_err()
        );
    }
}
