//! Each enum that crosses the C ABI (status codes, finish reasons, constraint kinds) is written
//! once, as a `c_enum!` table in src/tables/, and read three ways: the core module includes it
//! with [`rust_side`] (the Rust enum, its names, its serde form), `ffi` with [`c_side`] (the
//! `#[repr(C)]` enum, the conversions, the name lookups), and build.rs with its own reading that
//! renders the C enum for cbindgen, which does not expand macros.
//!
//! A table: the Rust enum, the C enum, then rows `Variant = C value => "name"`. Rows in braces
//! after the C enum exist only in C (`MAZE_STATUS_OK` is no error kind). The name is
//! what `as_str` returns and serde writes; the header spells the enumerator
//! `<C ENUM>_<NAME>` in capitals, e.g. `busy` in `maze_status` is `MAZE_STATUS_BUSY`.

/// The Rust enum of a table.
macro_rules! rust_side {
    (
        $(#[doc = $doc:literal])*
        pub enum $rust:ident;
        $(#[doc = $c_doc:literal])*
        c enum $c:ident $({
            $( $(#[doc = $only_doc:literal])* $only:ident = $only_value:literal => $only_name:literal, )*
        })?;
        $( $(#[doc = $row_doc:literal])* $row:ident = $value:literal => $name:literal, )*
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $rust {
            $( $(#[doc = $row_doc])* #[serde(rename = $name)] $row, )*
        }

        impl $rust {
            /// Every value, in table order.
            pub const ALL: &'static [Self] = &[$(Self::$row),*];

            /// The value's name, as serde writes it, e.g. "stop_sequence".
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$row => $name,)*
                }
            }

            /// The value named `name` (see [`Self::as_str`]).
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == name)
            }
        }
    };
}

/// The C enum of a table, with its conversions and names.
macro_rules! c_side {
    (
        $(#[doc = $doc:literal])*
        pub enum $rust:ident;
        $(#[doc = $c_doc:literal])*
        c enum $c:ident $({
            $( $(#[doc = $only_doc:literal])* $only:ident = $only_value:literal => $only_name:literal, )*
        })?;
        $( $(#[doc = $row_doc:literal])* $row:ident = $value:literal => $name:literal, )*
    ) => {
        $(#[doc = $c_doc])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $c {
            $($( $(#[doc = $only_doc])* $only = $only_value, )*)?
            $( $(#[doc = $row_doc])* $row = $value, )*
        }

        impl From<$rust> for $c {
            fn from(v: $rust) -> Self {
                match v {
                    $($rust::$row => Self::$row,)*
                }
            }
        }

        impl $c {
            /// Every value this library defines.
            pub const ALL: &'static [Self] = &[$($(Self::$only,)*)? $(Self::$row),*];

            /// The value whose C number is `raw`, if this library defines one.
            pub fn from_raw(raw: i64) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| *v as i64 == raw)
            }

            /// The Rust value; None for the C-only ones.
            pub fn to_core(self) -> Option<$rust> {
                match self {
                    $($(Self::$only => None,)*)?
                    $(Self::$row => Some($rust::$row),)*
                }
            }

            /// The table's name as a C string, e.g. "stop_sequence".
            pub fn name(self) -> &'static ::std::ffi::CStr {
                let name: &'static str = match self {
                    $($(Self::$only => concat!($only_name, "\0"),)*)?
                    $(Self::$row => concat!($name, "\0"),)*
                };
                ::std::ffi::CStr::from_bytes_with_nul(name.as_bytes()).expect("one NUL, at the end")
            }

            /// The enumerator as the header spells it, e.g. "MAZE_STATUS_BUSY".
            pub fn enumerator(self) -> &'static ::std::ffi::CStr {
                static NAMES: ::std::sync::LazyLock<Vec<::std::ffi::CString>> = ::std::sync::LazyLock::new(|| {
                    $c::ALL
                        .iter()
                        .map(|v| {
                            let name = format!("{}_{}", stringify!($c), v.name().to_str().unwrap_or_default());
                            ::std::ffi::CString::new(name.to_ascii_uppercase()).unwrap_or_default()
                        })
                        .collect()
                });
                let index = Self::ALL.iter().position(|v| *v == self).expect("ALL holds every value");
                &NAMES[index]
            }
        }
    };
}

pub(crate) use {c_side, rust_side};
