//! Mandates (DESIGN §3): the lifecycle of statuses and actions, and how creation and changes
//! behave when repeated, amended or read as of a past time.

mod changes;
mod lifecycle;
