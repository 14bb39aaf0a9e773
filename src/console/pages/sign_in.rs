//! Signing in with a JWT (the same tokens as the API), and out. The token is checked exactly
//! as a call's bearer token is, then exchanged for a session cookie; it is never stored or
//! logged. Payers use their wallet app, not the console.

use axum::Form;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::Timestamp;
use maud::{Markup, html};
use serde::Deserialize;

use super::super::layout;
use super::super::session::{self, Sessions};
use super::super::{Console, Section};
use crate::domain::actor::Role;

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

pub async fn form() -> Markup {
    sign_in_page(None)
}

pub async fn submit(State(console): State<Console>, Form(form): Form<SignIn>) -> Response {
    let refused =
        |message: &str| (StatusCode::UNAUTHORIZED, sign_in_page(Some(message))).into_response();
    let (actor, expires) = match console
        .0
        .authenticator
        .authenticate_until(form.token.trim())
    {
        Ok(found) => found,
        Err(e) => {
            tracing::info!(error = %e, "console sign-in refused");
            return refused(&format!("This token cannot sign in: {e}."));
        }
    };
    if actor.role == Role::Payer {
        return refused(
            "The console is for auditors, operators and merchants; payers see their mandates in \
             their wallet app.",
        );
    }
    let now = console.now();
    let token_end = Timestamp::from_second(expires).unwrap_or(now);
    match console.0.sessions.open(actor, token_end, now) {
        Ok((id, session)) => {
            tracing::info!(role = session.actor.role.as_str(), subject = %session.actor.subject,
                "console session opened");
            (
                [(
                    header::SET_COOKIE,
                    Sessions::cookie(&id, session.expires_at, now),
                )],
                Redirect::to(Section::Today.path()),
            )
                .into_response()
        }
        Err(e) => refused(&e.to_string()),
    }
}

pub async fn sign_out(State(console): State<Console>, headers: axum::http::HeaderMap) -> Response {
    for id in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(session::id_from_cookies)
    {
        console.0.sessions.close(id);
    }
    (
        [(header::SET_COOKIE, Sessions::removal())],
        Redirect::to("/sign-in"),
    )
        .into_response()
}

fn sign_in_page(message: Option<&str>) -> Markup {
    layout::bare(
        "Sign in",
        html! {
            @if let Some(message) = message {
                p.error role="alert" { (message) }
            }
            form method="post" action="/sign-in" {
                label for="token" { "Your access token (JWT)" }
                textarea id="token" name="token" rows="6" required autocomplete="off" {}
                button type="submit" { "Sign in" }
            }
            p.hint {
                "The same token the API accepts. The session lasts at most as long as the token, \
                 and ends when you sign out."
            }
        },
    )
}
