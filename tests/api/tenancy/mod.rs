//! Tenancy (DESIGN §2): a caller sees and changes only what lies inside its tenancy; another
//! tenant's resource answers exactly as one that does not exist, and the attempt is recorded
//! against the caller, never on the resource's chain.

mod deductions;
mod mandates;
