"""The Qwen2.5 tokenizer's fixed text: the split pattern, the 22 control tokens and the default system prompt
(SPEC §3). A leaf module: the tokenizer and the chat format both read it."""

PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
       r"|\s+(?!\S)|\s+")
# The same matches for tiktoken's regex engine (fancy-regex), faster: the five lookahead-free alternatives
# grouped so the engine hands them to the `regex` crate in one call instead of one call per alternative,
# and the final `\s+` written `\s` (it is only reached for one whitespace character before a non-space).
FAST_PAT = (r"(?:(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+)|\s+(?!\S)|\s")

CONTROL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
NUM_SPECIAL = 14  # the first 14 are `special` (skipped by skip_special_tokens); the last 8 are not

DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
