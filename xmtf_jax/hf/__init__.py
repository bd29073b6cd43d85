"""HuggingFace interop for both model families (mT5: MT5ForConditionalGeneration, BLOOM:
BloomForCausalLM; one `HFFamily` each in families.py): the name mappings, reading HF folders, streamed
export, tokenizer files, verification with transformers and the model card. The common calls,
re-exported (read_hf_config, load_hf_folder and params_from_hf take either family):

    hf.parameter_mapping(config)   hf.params_to_hf(params, config)   hf.params_from_hf(state, config)
    hf.t5config_from_hf(d)         hf.t5config_to_hf(config)         hf.load_hf_folder(folder, mesh)
"""
from xmtf_jax.hf.mapping import (hf_shape, parameter_mapping, params_to_hf, t5config_from_hf,
                                 t5config_to_hf)
from xmtf_jax.hf.reader import load_hf_folder, params_from_hf, read_hf_config

__all__ = ["hf_shape", "load_hf_folder", "parameter_mapping", "params_from_hf", "params_to_hf", "read_hf_config",
           "t5config_from_hf", "t5config_to_hf"]
