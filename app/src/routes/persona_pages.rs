//! Entry pages of the approver, auditor and admin personas.

use leptos::prelude::*;

use crate::components::guard::RequirePersona;
use crate::model::user::Persona;

#[component]
pub fn ApprovalsPage() -> impl IntoView {
    view! {
        <RequirePersona
            persona=Persona::Approver
            children=|_| {
                view! {
                    <section class="card" data-testid="approvals-page">
                        <h1>"Approvals"</h1>
                        <p>"Requests that you may decide are listed here, oldest first."</p>
                    </section>
                }
            }
        />
    }
}

#[component]
pub fn AuditPage() -> impl IntoView {
    view! {
        <RequirePersona
            persona=Persona::Auditor
            children=|_| {
                view! {
                    <section class="card" data-testid="audit-page">
                        <h1>"Audit"</h1>
                        <p>"The grant history and its exports are listed here."</p>
                    </section>
                }
            }
        />
    }
}

#[component]
pub fn AdminPage() -> impl IntoView {
    view! {
        <RequirePersona
            persona=Persona::Admin
            children=|_| {
                view! {
                    <section class="card" data-testid="admin-page">
                        <h1>"Admin"</h1>
                        <p>"The state of the scheduler and of every grant is shown here."</p>
                    </section>
                }
            }
        />
    }
}
