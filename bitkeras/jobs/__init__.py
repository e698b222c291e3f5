"""The jobs and the command line: `bitkeras finetune` and `bitkeras pretrain`."""
