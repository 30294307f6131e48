//! The signal types a bus knows, by name.

use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::signal::{Signal, SignalType};
use crate::storage::Backend;
use crate::storage::statements::Statements;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A registered signal type with its validated table and the statements built for it.
#[derive(Debug)]
pub(crate) struct Registered {
    pub ty: SignalType,
    pub table: Ident,
    pub name: Arc<str>,
    pub sql: Statements,
}

/// Index of a registered type in the registry.
pub(crate) type TypeIdx = usize;

#[derive(Debug, Default)]
pub(crate) struct Registry {
    types: Vec<Registered>,
    by_name: HashMap<String, TypeIdx>,
}

impl Registry {
    /// Register `ty` on database `DB`; `lock_wait` bounds an ordered flush's waits for rows
    /// other flushers hold.
    /// `transaction_pooler`: the database is reached through a pooler in transaction mode.
    pub fn add<DB: Backend>(
        &mut self,
        ty: SignalType,
        lock_wait: Duration,
        transaction_pooler: bool,
    ) -> Result<()> {
        let table = ty.validate()?;
        if let Some(&i) = self.by_name.get(ty.name()) {
            if self.types[i].ty == ty {
                return Ok(()); // registering the same type twice is harmless
            }
            return Err(Error::Config(format!(
                "two different signal types are named `{}`",
                ty.name()
            )));
        }
        if let Some(other) = self.types.iter().find(|r| r.table == table) {
            return Err(Error::Config(format!(
                "signal types `{}` and `{}` both use table `{table}`; each type needs its own",
                other.name,
                ty.name()
            )));
        }
        self.by_name.insert(ty.name().to_owned(), self.types.len());
        let sql = Statements::new(
            DB::DIALECT,
            &table,
            ty.order_columns(),
            lock_wait,
            transaction_pooler,
        );
        self.types.push(Registered {
            name: Arc::from(ty.name()),
            table,
            ty,
            sql,
        });
        Ok(())
    }

    pub fn get(&self, idx: TypeIdx) -> &Registered {
        &self.types[idx]
    }

    pub fn index_of(&self, name: &str) -> Option<TypeIdx> {
        self.by_name.get(name).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (TypeIdx, &Registered)> {
        self.types.iter().enumerate()
    }

    pub fn known_names(&self) -> String {
        let names: Vec<&str> = self.types.iter().map(|r| &*r.name).collect();
        if names.is_empty() {
            "(none registered)".into()
        } else {
            names.join(", ")
        }
    }

    /// The types a selection names, in registration order.
    pub fn select(&self, selection: &Selection) -> Result<Vec<TypeIdx>> {
        let check = |name: &String| {
            self.index_of(name).ok_or_else(|| Error::UnknownSignal {
                name: name.clone(),
                known: self.known_names(),
            })
        };
        let excluded = selection
            .exclude
            .iter()
            .map(check)
            .collect::<Result<Vec<_>>>()?;
        let chosen: Vec<TypeIdx> = match &selection.only {
            None => (0..self.types.len()).collect(),
            Some(names) => {
                let mut idx = names.iter().map(check).collect::<Result<Vec<_>>>()?;
                idx.sort_unstable();
                idx.dedup();
                idx
            }
        };
        Ok(chosen
            .into_iter()
            .filter(|i| !excluded.contains(i))
            .collect())
    }
}

/// Which signal types an explicit flush or a pending count covers.
///
/// ```
/// use signalbus_core::Selection;
///
/// let everything = Selection::all();
/// let two = Selection::only(["order_placed", "payment_made"]);
/// let all_but_audit = Selection::all().exclude(["audit_event"]);
/// # let _ = (everything, two, all_but_audit);
/// ```
///
/// Typed signals select themselves: `Selection::of::<OrderPlaced>().and::<PaymentMade>()`.
/// A name no registered type has is an error of the call that gets the selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    only: Option<Vec<String>>,
    exclude: Vec<String>,
}

impl Selection {
    /// Every registered signal type.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only the named signal types. Unknown names are an error.
    pub fn only<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Selection {
            only: Some(names.into_iter().map(Into::into).collect()),
            exclude: Vec::new(),
        }
    }

    /// Only the signal type `S`: `Selection::of::<OrderPlaced>()`. Add more with
    /// [`Selection::and`].
    pub fn of<S: Signal>() -> Self {
        Selection::only([S::signal_type().name()])
    }

    /// Also the signal type `S` (after [`Selection::of`] or [`Selection::only`]; on
    /// [`Selection::all`] it changes nothing).
    pub fn and<S: Signal>(mut self) -> Self {
        if let Some(names) = &mut self.only {
            names.push(S::signal_type().name().to_owned());
        }
        self
    }

    /// Leave out the signal type `S`.
    pub fn without<S: Signal>(self) -> Self {
        self.exclude([S::signal_type().name()])
    }

    /// Leave out these signal types.
    pub fn exclude<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude.extend(names.into_iter().map(Into::into));
        self
    }
}
