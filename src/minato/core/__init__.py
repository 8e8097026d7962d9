"""The use cases: admission, policy, generation, conversations, images. No web framework."""
