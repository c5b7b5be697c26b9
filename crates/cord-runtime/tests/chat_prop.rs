//! Property tests of the chat-template renderer: arbitrary template strings and arbitrary
//! message contents never panic; a template either compiles or is an error, and rendering
//! either works or is an error.

use cord_runtime::chat::{ChatTemplate, Message};
use proptest::prelude::*;

/// Pieces of Jinja, valid and broken, that real chat templates are made of.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{% for message in messages %}".to_string()),
        Just("{% endfor %}".to_string()),
        Just("{% if add_generation_prompt %}".to_string()),
        Just("{% if messages[0].role == 'system' %}".to_string()),
        Just("{% elif loop.last %}".to_string()),
        Just("{% else %}".to_string()),
        Just("{% endif %}".to_string()),
        Just("{{ message.content }}".to_string()),
        Just("{{ message['role'] }}".to_string()),
        Just("{{ messages[5].content }}".to_string()),
        Just("{{ bos_token }}".to_string()),
        Just("{{ eos_token }}".to_string()),
        Just("{{ raise_exception('no system role') }}".to_string()),
        Just("{{ message.content.strip().split('x')[0] }}".to_string()),
        Just("{{ message.content | trim | length }}".to_string()),
        Just("{{ strftime_now('%d %b %Y') }}".to_string()),
        Just("{% set ns = namespace(x=1) %}{{ ns.x }}".to_string()),
        Just("{{ 1 / 0 }}".to_string()),
        Just("{{ undefined_var.attr }}".to_string()),
        Just("{{ tools | tojson }}".to_string()),
        Just("{% generation %}".to_string()),
        Just("{% endgeneration %}".to_string()),
        Just("{%".to_string()),
        Just("}}".to_string()),
        Just("{#".to_string()),
        Just("<|im_start|>".to_string()),
        Just("<think>\n".to_string()),
        "[ -~\n]{0,12}",
        "\\PC{0,6}",
    ]
}

fn template() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(fragment(), 0..12).prop_map(|v| v.concat()),
        "\\PC{0,64}",
        any::<String>(),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![
            Just("system".to_string()),
            Just("user".to_string()),
            Just("assistant".to_string()),
            "\\PC{0,8}",
        ],
        prop_oneof![
            any::<String>(),
            "\\PC{0,40}",
            Just("{{ bos_token }}{% endfor %}".to_string())
        ],
    )
        .prop_map(|(role, content)| Message { role, content })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_templates_and_messages_never_panic(
        source in template(),
        bos in "\\PC{0,6}",
        eos in "\\PC{0,6}",
        messages in prop::collection::vec(message(), 0..4),
        system in prop::option::of(any::<String>()),
        user in any::<String>(),
        prefill in prop_oneof![Just("<think>\n### Step 1.".to_string()), any::<String>()],
        gen_prompt in any::<bool>(),
    ) {
        if let Ok(t) = ChatTemplate::new(&source, &bos, &eos) {
            let _ = t.render_messages(&messages, gen_prompt);
            let _ = t.prompt_with_prefill(system.as_deref(), &user, &prefill);
        }
    }

    /// Message contents are data, never template code: a fixed template renders any content
    /// verbatim.
    #[test]
    fn contents_render_verbatim(system in any::<String>(), user in any::<String>(), prefill in any::<String>()) {
        let t = ChatTemplate::new(
            "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
            "",
            "",
        )
        .unwrap();
        let out = t.prompt_with_prefill(Some(&system), &user, &prefill).unwrap();
        let expected = format!("[system]{system}[user]{user}[assistant]");
        prop_assert!(out.starts_with(&expected), "{:?}", out);
    }
}

/// Found by the property test above (CI, 2026-11-29): `{%}` made the `{% generation %}`
/// rewriter slice backwards (its `%}` overlaps the opening `{%`) and panic.
#[test]
fn overlapping_tag_markers_are_an_error_not_a_panic() {
    for source in ["{%}}", "{%}", "a{%}b%}", "{%- %}", "{%%}"] {
        if let Ok(t) = ChatTemplate::new(source, "", "") {
            let _ = t.prompt_with_prefill(None, "q", "<think>\n### Step 1.");
        }
    }
}
