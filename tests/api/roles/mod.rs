//! Who may call what (DESIGN §2): every RPC × every role over real gRPC. A role outside the
//! matrix is PERMISSION_DENIED, writes nothing and leaves one ACCESS_DENIED event on the
//! caller's own chain; a role inside it gets through.

mod deductions;
mod mandates;
