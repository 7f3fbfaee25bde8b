use leptos::prelude::*;

/// Returns a signal that is `false` in the server-rendered HTML and turns `true` once the
/// wasm bundle has hydrated the page.
///
/// Effects run only in the browser, so the signal flips only after hydration. Controls that
/// need JavaScript render behind it, so a page without JavaScript never shows a dead button.
pub fn use_hydrated() -> ReadSignal<bool> {
    let (hydrated, set_hydrated) = signal(false);
    Effect::new(move |_| set_hydrated.set(true));
    hydrated
}

/// Badge that reads "Server-rendered" in the HTML and "Interactive" after hydration.
///
/// Browser tests read `data-hydrated` to tell whether the wasm bundle loaded and ran.
#[component]
pub fn HydrationBadge(hydrated: ReadSignal<bool>) -> impl IntoView {
    view! {
        <span
            class="hydration-badge"
            data-testid="hydration-badge"
            data-hydrated=move || hydrated.get().to_string()
        >
            {move || if hydrated.get() { "Interactive" } else { "Server-rendered" }}
        </span>
    }
}
