"""Fine-tuning: LoRA/QLoRA supervised fine-tuning of the base model on the prepared chat data."""
