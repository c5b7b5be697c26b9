//! Real chat templates (tests/fixtures/templates, see SOURCES.md) render exactly as
//! `transformers.apply_chat_template` would; expected strings are written by hand.

use cord_runtime::chat::{ChatError, ChatTemplate, Message, PLAIN_TEMPLATE, template_source};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/templates/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn template(name: &str, bos: &str, eos: &str) -> ChatTemplate {
    ChatTemplate::new(&fixture(name), bos, eos).unwrap()
}

const USER: &str = "What is 2+2?";
const SYS: &str = "Solve step by step.";

#[test]
fn smollm2_chatml_with_default_system_prompt() {
    let t = template("smollm2-135m-instruct.jinja", "<|im_start|>", "<|im_end|>");
    let default_sys = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    assert_eq!(
        t.render(None, USER, true).unwrap(),
        format!("{default_sys}<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(
        t.render(None, USER, false).unwrap(),
        format!("{default_sys}<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    );
    assert_eq!(
        t.render(Some(SYS), USER, true).unwrap(),
        "<|im_start|>system\nSolve step by step.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.prompt_with_prefill(Some(SYS), USER, "Step 1: add.")
            .unwrap(),
        "<|im_start|>system\nSolve step by step.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nStep 1: add."
    );
    // No <think> at the end of the rendered prompt: a <think> prefill is kept as it is.
    assert_eq!(
        t.prompt_with_prefill(None, USER, "<think>\nHmm").unwrap(),
        format!(
            "{default_sys}<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nHmm"
        )
    );
}

#[test]
fn qwen25_default_system_prompt() {
    let t = template("qwen2.5-0.5b-instruct.jinja", "", "<|im_end|>");
    assert_eq!(
        t.render(None, USER, true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(Some(SYS), USER, false).unwrap(),
        "<|im_start|>system\nSolve step by step.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    );
    assert_eq!(
        t.prompt_with_prefill(Some(SYS), USER, "<think>\nFirst")
            .unwrap(),
        "<|im_start|>system\nSolve step by step.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n<think>\nFirst"
    );
    // Multi-turn with an earlier assistant turn.
    let msgs = [
        Message::new("user", "a"),
        Message::new("assistant", "b"),
        Message::new("user", "c"),
    ];
    assert_eq!(
        t.render_messages(&msgs, true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn llama31_date_header() {
    let t = template(
        "llama-3.1-8b-instruct.jinja",
        "<|begin_of_text|>",
        "<|eot_id|>",
    );
    let head = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
                Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";
    assert_eq!(
        t.render(None, USER, true).unwrap(),
        format!(
            "{head}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    );
    // The system message and the user message are trimmed by the template.
    assert_eq!(
        t.render(Some("  Solve step by step.\n"), " What is 2+2? \n", false)
            .unwrap(),
        format!(
            "{head}Solve step by step.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        )
    );
    assert_eq!(
        t.prompt_with_prefill(Some(SYS), USER, "## Step 1").unwrap(),
        format!(
            "{head}Solve step by step.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n## Step 1"
        )
    );
}

#[test]
fn gemma3_system_merged_into_first_user_turn() {
    let t = template("gemma-3-270m-it.jinja", "<bos>", "<eos>");
    assert_eq!(
        t.render(None, USER, true).unwrap(),
        "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(
        t.render(Some(SYS), USER, true).unwrap(),
        "<bos><start_of_turn>user\nSolve step by step.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(
        t.render(Some(SYS), USER, false).unwrap(),
        "<bos><start_of_turn>user\nSolve step by step.\n\nWhat is 2+2?<end_of_turn>\n"
    );
    assert_eq!(
        t.prompt_with_prefill(None, USER, "Step 1:").unwrap(),
        "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\nStep 1:"
    );
    // The template's own raise_exception: roles must alternate.
    let bad = [Message::new("user", "a"), Message::new("user", "b")];
    match t.render_messages(&bad, true) {
        Err(ChatError::Render(msg)) => {
            assert!(msg.contains("Conversation roles must alternate"), "{msg}")
        }
        other => panic!("expected a render error, got {other:?}"),
    }
}

const PHI_SYSTEM: &str = "You are Phi, a language model trained by Microsoft to help users. Your role as an assistant \
involves thoroughly exploring questions through a systematic thinking process before providing the final precise and \
accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, \
reassessment, reflection, backtracing, and iteration to develop well-considered thinking process. Please structure \
your response into two main sections: Thought and Solution using the specified format: <think> {Thought section} \
</think> {Solution section}. In the Thought section, detail your reasoning process in steps. Each step should include \
detailed considerations such as analysing questions, summarizing relevant findings, brainstorming new ideas, verifying \
the accuracy of the current steps, refining any errors, and revisiting previous steps. In the Solution section, based \
on various attempts, explorations, and reflections from the Thought section, systematically present the final \
solution that you deem correct. The Solution section should be logical, accurate, and concise and detail necessary \
steps needed to reach the conclusion. Now, try to solve the following question through the above guidelines:";

#[test]
fn phi4_reasoning_plus_im_sep() {
    let t = template("phi-4-reasoning-plus.jinja", "<|endoftext|>", "<|im_end|>");
    let want = format!(
        "<|im_start|>system<|im_sep|>{PHI_SYSTEM}<|im_end|><|im_start|>user<|im_sep|>What is 2+2?<|im_end|>\
         <|im_start|>assistant<|im_sep|>"
    );
    assert_eq!(t.render(None, USER, true).unwrap(), want);
    // This template ignores system messages.
    assert_eq!(t.render(Some(SYS), USER, true).unwrap(), want);
    assert_eq!(
        t.prompt_with_prefill(None, USER, "<think>\nOk").unwrap(),
        format!("{want}<think>\nOk")
    );
    // {% generation %} blocks render their body.
    let msgs = [
        Message::new("user", "a"),
        Message::new("assistant", "b"),
        Message::new("user", "c"),
    ];
    assert_eq!(
        t.render_messages(&msgs, false).unwrap(),
        format!(
            "<|im_start|>system<|im_sep|>{PHI_SYSTEM}<|im_end|><|im_start|>user<|im_sep|>a<|im_end|>\
             <|im_start|>assistant<|im_sep|>b<|im_end|><|im_start|>user<|im_sep|>c<|im_end|>"
        )
    );
}

#[test]
fn qwq_generation_prompt_ends_with_think_and_prefill_never_doubles_it() {
    let t = template("qwq-32b.jinja", "", "<|im_end|>");
    let base = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n";
    assert_eq!(t.render(None, USER, true).unwrap(), base);
    assert_eq!(
        t.render(None, USER, false).unwrap(),
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    );
    assert_eq!(
        t.render(Some(SYS), USER, true).unwrap(),
        format!("<|im_start|>system\nSolve step by step.<|im_end|>\n{base}")
    );
    // Prefill starting with <think>: the template's <think>\n is kept, the prefill's is dropped.
    assert_eq!(
        t.prompt_with_prefill(None, USER, "<think>\nStep 1: 2+2=4.")
            .unwrap(),
        format!("{base}Step 1: 2+2=4.")
    );
    assert_eq!(
        t.prompt_with_prefill(None, USER, "<think>Step 1").unwrap(),
        format!("{base}Step 1")
    );
    assert_eq!(
        t.prompt_with_prefill(None, USER, "Step 1").unwrap(),
        format!("{base}Step 1")
    );
    assert_eq!(t.prompt_with_prefill(None, USER, "").unwrap(), base);
    assert_eq!(
        t.prompt_with_prefill(None, USER, "<think>\n").unwrap(),
        base
    );
    let p = t
        .prompt_with_prefill(Some(SYS), USER, "<think>\nStep 1\n\n### Step 2")
        .unwrap();
    assert_eq!(p.matches("<think>").count(), 1, "{p}");
    // Multi-turn: earlier assistant turns lose their reasoning (pycompat split/lstrip).
    let msgs = [
        Message::new("user", "a"),
        Message::new("assistant", "<think>\nx\n</think>\n\nb"),
        Message::new("user", "c"),
    ];
    assert_eq!(
        t.render_messages(&msgs, true).unwrap(),
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n\
         <|im_start|>assistant\n<think>\n"
    );
}

#[test]
fn think_rule_without_trailing_whitespace_keeps_the_prefill_newline() {
    let t = ChatTemplate::new("{{ messages[-1].content }}|<think>", "", "").unwrap();
    assert_eq!(
        t.prompt_with_prefill(None, "u", "<think>\nA").unwrap(),
        "u|<think>\nA"
    );
    // (As in transformers, one trailing newline of the template source is dropped.)
    let t = ChatTemplate::new("{{ messages[-1].content }}|<think>\n\n", "", "").unwrap();
    assert_eq!(
        t.prompt_with_prefill(None, "u", "<think>\nA").unwrap(),
        "u|<think>\nA"
    );
}

#[test]
fn plain_fallback_template() {
    let t = ChatTemplate::plain("<s>", "</s>");
    assert_eq!(
        t.render(None, USER, true).unwrap(),
        "User: What is 2+2?\n\nAssistant:\n"
    );
    assert_eq!(
        t.render(Some(SYS), USER, false).unwrap(),
        "Solve step by step.\n\nUser: What is 2+2?\n\n"
    );
    assert_eq!(
        t.prompt_with_prefill(Some(SYS), USER, "Step 1").unwrap(),
        "Solve step by step.\n\nUser: What is 2+2?\n\nAssistant:\nStep 1"
    );
    let t2 = ChatTemplate::new(PLAIN_TEMPLATE, "", "").unwrap();
    let msgs = [
        Message::new("user", "a"),
        Message::new("assistant", "b"),
        Message::new("user", "c"),
    ];
    assert_eq!(
        t2.render_messages(&msgs, true).unwrap(),
        "User: a\n\nAssistant: b\n\nUser: c\n\nAssistant:\n"
    );
}

#[test]
fn tolerated_template_features() {
    // pycompat string methods, loop controls, namespace, raise_exception, strftime_now, bos/eos,
    // `tools` defined as none, messages[0]['role'].
    let src = "{{ bos_token }}{% if tools is none %}[no tools]{% endif %}{{ messages[0]['role'] }}:\
        {% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
        {{ m.content.strip().upper() }}{% if m.content.startswith(' W') %}!{% endif %}{% break %}{% endfor %}\
        {% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}\
        {% if strftime_now('%Y')|int > 2000 %}Y{% endif %}{{ eos_token }}";
    let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
    assert_eq!(
        t.render(Some("sys"), " What ", true).unwrap(),
        "<s>[no tools]system:WHAT!2Y</s>"
    );
    let t = ChatTemplate::new("{{ raise_exception('nope') }}", "", "").unwrap();
    assert!(matches!(t.render(None, "u", true), Err(ChatError::Render(m)) if m.contains("nope")));
    // Bad templates are errors, not panics.
    assert!(matches!(
        ChatTemplate::new("{% if %}", "", ""),
        Err(ChatError::Template(_))
    ));
    assert!(matches!(
        ChatTemplate::new("{% for x in y %}", "", ""),
        Err(ChatError::Template(_))
    ));
    let t = ChatTemplate::new("{{ messages[5].content.foo.bar }}", "", "").unwrap();
    assert!(matches!(
        t.render(None, "u", true),
        Err(ChatError::Render(_))
    ));
}

#[test]
fn tokenizer_config_string_and_list_forms() {
    let smol = fixture("smollm2-135m-instruct.jinja");
    let cfg = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "lstrip": false},
        "chat_template": smol,
    });
    let t = ChatTemplate::from_tokenizer_config(&cfg.to_string())
        .unwrap()
        .unwrap();
    assert_eq!(
        (t.bos_token(), t.eos_token()),
        ("<|im_start|>", "<|im_end|>")
    );
    assert!(
        t.render(None, "hi", true)
            .unwrap()
            .ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    );

    let list = serde_json::json!({
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "DEFAULT {{ messages[0].content }}"},
        ]
    });
    assert_eq!(
        template_source(&list).unwrap().as_deref(),
        Some("DEFAULT {{ messages[0].content }}")
    );
    let t = ChatTemplate::from_tokenizer_config(&list.to_string())
        .unwrap()
        .unwrap();
    assert_eq!(t.render(None, "x", true).unwrap(), "DEFAULT x");
    let first = serde_json::json!({"chat_template": [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]});
    assert_eq!(template_source(&first).unwrap().as_deref(), Some("A"));

    assert!(ChatTemplate::from_tokenizer_config("{}").unwrap().is_none());
    assert!(
        ChatTemplate::from_tokenizer_config(r#"{"chat_template": null}"#)
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        ChatTemplate::from_tokenizer_config("not json"),
        Err(ChatError::Config(_))
    ));
    assert!(matches!(
        ChatTemplate::from_tokenizer_config(r#"{"chat_template": 3}"#),
        Err(ChatError::Config(_))
    ));
    assert!(matches!(
        ChatTemplate::from_tokenizer_config(r#"{"chat_template": [{"name": "default"}]}"#),
        Err(ChatError::Config(_))
    ));
}
