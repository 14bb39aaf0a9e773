//! Console sessions: a verified JWT exchanged for a random session id carried in an HttpOnly,
//! `SameSite=Strict` cookie. The server keeps only the id's SHA-256 (a leaked table opens no
//! session) with who signed in and until when: the shorter of the console's session lifetime
//! and the token's own expiry. Sessions live in memory, so a restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use crate::domain::actor::Actor;

/// The cookie's name.
pub const COOKIE: &str = "withholding_console";
/// Sessions held at once; signing in past it first drops the expired ones, then refuses.
pub const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Session {
    pub actor: Actor,
    pub expires_at: Timestamp,
}

/// Why a sign-in opened no session.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the token has expired")]
    Expired,
    #[error("too many console sessions are open; try again in a few minutes")]
    Full,
    #[error("no session id could be drawn from the operating system's random source")]
    Random,
}

pub struct Sessions {
    lifetime: SignedDuration,
    open: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub fn new(lifetime: SignedDuration) -> Self {
        Self {
            lifetime,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a session for `actor` until the earlier of `now` + the lifetime and the token's
    /// expiry; returns the id for the cookie and the session.
    pub fn open(
        &self,
        actor: Actor,
        token_expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(String, Session), OpenError> {
        let expires_at = now
            .checked_add(self.lifetime)
            .unwrap_or(Timestamp::MAX)
            .min(token_expires_at);
        if expires_at <= now {
            return Err(OpenError::Expired);
        }
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).map_err(|_| OpenError::Random)?;
        let id = hex::encode(id);
        let session = Session { actor, expires_at };
        let mut open = self.open.lock().expect("sessions lock");
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, s| s.expires_at > now);
            if open.len() >= MAX_SESSIONS {
                return Err(OpenError::Full);
            }
        }
        open.insert(digest(&id), session.clone());
        Ok((id, session))
    }

    /// The live session the cookie's id names; an expired one is dropped.
    pub fn get(&self, id: &str, now: Timestamp) -> Option<Session> {
        let key = digest(id);
        let mut open = self.open.lock().expect("sessions lock");
        match open.get(&key) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                open.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        self.open.lock().expect("sessions lock").remove(&digest(id));
    }

    /// The `Set-Cookie` value that carries `id` until `expires_at`.
    pub fn cookie(id: &str, expires_at: Timestamp, now: Timestamp) -> String {
        let max_age = expires_at.duration_since(now).as_secs().max(0);
        format!("{COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict")
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn removal() -> String {
        format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The session id in a `Cookie` header, if it carries ours.
pub fn id_from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::actor::Role;

    fn auditor() -> Actor {
        Actor {
            role: Role::Auditor,
            subject: "auditor-1".into(),
            merchant_id: None,
        }
    }

    #[test]
    fn a_session_lasts_the_shorter_of_its_lifetime_and_the_token() {
        let sessions = Sessions::new(SignedDuration::from_mins(15));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let token_end = now + SignedDuration::from_mins(5);
        let (id, session) = sessions.open(auditor(), token_end, now).unwrap();
        assert_eq!(session.expires_at, token_end);
        assert!(
            sessions
                .get(&id, now + SignedDuration::from_mins(4))
                .is_some()
        );
        assert!(sessions.get(&id, token_end).is_none());
        // Dropped once seen expired.
        assert!(sessions.get(&id, now).is_none());
    }

    #[test]
    fn an_expired_token_opens_nothing_and_a_closed_session_is_gone() {
        let sessions = Sessions::new(SignedDuration::from_mins(15));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert!(matches!(
            sessions.open(auditor(), now, now),
            Err(OpenError::Expired)
        ));
        let (id, _) = sessions
            .open(auditor(), now + SignedDuration::from_hours(1), now)
            .unwrap();
        assert_eq!(
            Sessions::cookie(&id, now + SignedDuration::from_mins(15), now),
            format!("{COOKIE}={id}; Path=/; Max-Age=900; HttpOnly; SameSite=Strict")
        );
        sessions.close(&id);
        assert!(sessions.get(&id, now).is_none());
    }

    #[test]
    fn only_a_well_formed_id_of_ours_is_read_from_the_cookie_header() {
        let id = "ab".repeat(32);
        assert_eq!(
            id_from_cookies(&format!("other=1; {COOKIE}={id}; x=y")),
            Some(id.as_str())
        );
        assert_eq!(id_from_cookies(&format!("{COOKIE}=../../etc")), None);
        assert_eq!(id_from_cookies("other=1"), None);
    }
}
