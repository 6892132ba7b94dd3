//! The status of a Kubernetes condition, as a type rather than strings.

/// A condition's status: `True`, `False` or `Unknown`, spelled as
/// Kubernetes spells it (`as_str`, `Display` and parsing agree).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantArray,
)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known (yet) whether the condition holds.
    Unknown,
}

impl ConditionStatus {
    /// The status as a condition carries it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether `status` (a condition's string) is this status.
    pub fn is(self, status: &str) -> bool {
        status == self.as_str()
    }
}

impl From<bool> for ConditionStatus {
    fn from(holds: bool) -> Self {
        if holds { Self::True } else { Self::False }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    #[test]
    fn statuses_are_spelled_as_kubernetes_spells_them() {
        let spelled: Vec<&str> = ConditionStatus::VARIANTS
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(spelled, ["True", "False", "Unknown"]);
        for s in ConditionStatus::VARIANTS {
            assert_eq!(s.as_str().parse::<ConditionStatus>(), Ok(*s));
            assert!(s.is(&s.to_string()));
        }
        assert_eq!(ConditionStatus::from(true), ConditionStatus::True);
        assert!(!ConditionStatus::False.is("false"));
    }
}
