use leptos::prelude::*;

use crate::model::request::Flash;

/// The success or error message that a form post left for this page.
#[component]
pub fn FlashNotice(flash: Flash) -> impl IntoView {
    view! {
        {flash.success.map(|message| view! { <p class="notice notice-ok" role="status" data-testid="flash-success">{message}</p> })}
        {flash.error.map(|message| view! { <p class="notice notice-error" role="alert" data-testid="flash-error">{message}</p> })}
    }
}

/// A failed server function, shown in place of the content it would have loaded.
#[component]
pub fn ErrorNotice(message: String) -> impl IntoView {
    view! { <p class="notice notice-error" role="alert" data-testid="load-error">{message}</p> }
}
