//! `names!`: enums whose every value has exactly one wire name.
//!
//! A state, a phase, an event reason, a role or a status is written once, as
//! `Variant = "wire-name"`. The macro puts `#[serde(rename = "wire-name")]` on the variant
//! (so serialization and the OpenAPI schema use that name), and generates `ALL`,
//! `as_str`, `Display`, `FromStr` and deserialization (through `FromStr`) from the same
//! list, so they can never disagree and no name is spelled as a literal anywhere else.
//! An unknown name is refused with the same bounded message everywhere: in a JSON body,
//! a query, an MQTT payload or a flag.

/// Declares a names enum, `Variant = "wire-name"` for each value, or `by variant name`
/// when the wire names are the variant names. `Debug, Clone, Copy, PartialEq, Eq, Hash`,
/// serde, and (with the
/// `openapi` feature) `ToSchema` are derived; add others (`PartialOrd`, `Default`) with
/// a `#[derive]` of their own. `$what` is how `FromStr` errors call it ("unknown state
/// \"x\"; use one of: ...").
macro_rules! names {
    // Wire names that are the variant names themselves (`EventReason`, `Phase`).
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident as $what:literal by variant name {
            $( $(#[$vmeta:meta])* $variant:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        names!(@impl $name, $what, $( $variant = stringify!($variant) ),+);
    };
    // `$text` is a `tt`, not a `literal`: a `literal` fragment reaches derive macros
    // wrapped in an invisible group, which serde looks through but utoipa does not (the
    // OpenAPI schema then listed the variant names; `api::openapi` tests hold to it).
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident as $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:tt ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        names!(@impl $name, $what, $( $variant = $text ),+);
    };
    (@impl $name:ident, $what:literal, $( $variant:ident = $text:expr ),+) => {
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::names::deserialize(d)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::names::unknown($what, s, &[$($text),+]))
            }
        }
    };
}

pub(crate) use names;

/// Deserializes a name through its `FromStr`, so a bad one gets the bounded message of
/// [`unknown`] rather than serde's, which repeats the whole value.
pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// The `FromStr` error: the value (cut to 64 characters) and every valid name.
pub(crate) fn unknown(what: &str, got: &str, valid: &[&str]) -> String {
    let got: String = got.chars().take(64).collect();
    format!("unknown {what} {got:?}; use one of: {}", valid.join(", "))
}

#[cfg(test)]
mod tests {
    names! {
        enum Colour as "colour" {
            Red = "red",
            /// A comment on a variant stays.
            DarkBlue = "dark-blue",
        }
    }

    #[test]
    fn every_name_round_trips_through_text_and_json() {
        assert_eq!(Colour::ALL, [Colour::Red, Colour::DarkBlue]);
        for c in Colour::ALL {
            assert_eq!(c.as_str().parse::<Colour>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<Colour>(&json).unwrap(), c);
        }
    }

    names! {
        enum Shape as "shape" by variant name {
            Circle,
            /// Documented too.
            BigSquare,
        }
    }

    #[test]
    fn wire_names_can_be_the_variant_names() {
        assert_eq!(Shape::ALL, [Shape::Circle, Shape::BigSquare]);
        assert_eq!(Shape::BigSquare.as_str(), "BigSquare");
        assert_eq!(
            serde_json::to_string(&Shape::BigSquare).unwrap(),
            "\"BigSquare\""
        );
        assert_eq!("Circle".parse::<Shape>(), Ok(Shape::Circle));
        assert!("circle".parse::<Shape>().is_err());
    }

    #[test]
    fn a_hostile_name_is_refused_briefly_wherever_it_comes_from() {
        // Huge, multibyte, wrong case, not a string at all.
        let huge = format!("\"{}\"", "x".repeat(1 << 20));
        let err = serde_json::from_str::<Colour>(&huge)
            .unwrap_err()
            .to_string();
        assert!(err.len() < 200, "{} bytes", err.len());
        assert!(err.contains("use one of: red, dark-blue"), "{err}");
        for bad in [
            "\"rëd\"",
            "\"Red\"",
            "\"red \"",
            "\"\"",
            "7",
            "null",
            "[\"red\"]",
        ] {
            assert!(serde_json::from_str::<Colour>(bad).is_err(), "{bad}");
        }
        let multibyte = "\u{1F600}".repeat(100);
        let err = multibyte.parse::<Colour>().unwrap_err();
        assert!(
            err.chars().filter(|c| *c == '\u{1F600}').count() <= 64,
            "{err}"
        );
        // As a map key too (a summary's `by_state`).
        let keyed: Result<std::collections::HashMap<Colour, u8>, _> =
            serde_json::from_str(r#"{"red": 1, "dark-blue": 2}"#);
        assert_eq!(keyed.unwrap().len(), 2);
        assert!(
            serde_json::from_str::<std::collections::HashMap<Colour, u8>>(r#"{"blue": 1}"#)
                .is_err()
        );
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        assert_eq!(
            "DarkBlue".parse::<Colour>(),
            Err("unknown colour \"DarkBlue\"; use one of: red, dark-blue".into())
        );
        let long = "x".repeat(1000);
        let err = long.parse::<Colour>().unwrap_err();
        assert!(err.len() < 120, "{err}");
    }
}
