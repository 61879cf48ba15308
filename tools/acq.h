// acq.h - the model tool's subcommands. Each takes argv with argv[0] = the command name and
// returns the process exit status (0 ok, 1 failure, 2 usage).
#ifndef ACQ_H
#define ACQ_H

int acq_info_main(int argc, char **argv);
int acq_run_main(int argc, char **argv);
int acq_perplexity_main(int argc, char **argv);
int acq_logits_main(int argc, char **argv);
int acq_convert_main(int argc, char **argv);
int acq_dump_main(int argc, char **argv);
int acq_tokenize_main(int argc, char **argv);
int acq_lowrank_main(int argc, char **argv);
int acq_prune_main(int argc, char **argv);
int acq_quantize_main(int argc, char **argv);
int acq_eval_main(int argc, char **argv);
int acq_zoo_main(int argc, char **argv);
int acq_train_controller_main(int argc, char **argv);
int acq_label_main(int argc, char **argv);

// Prints "acq: <context>: <detail of the last libac error>" as one line and returns 1.
int acq_fail(const char *context, int rc);

#endif
