"""Message templates: versioned texts with ((placeholders)) per language, rendered into a
message's content and previewed with their SMS cost."""
