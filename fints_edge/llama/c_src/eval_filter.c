/* fints-edge: the eval callback's "ask" step in C.
 *
 * llama.cpp asks the eval callback about every node of the graph (about 1,100 per token on
 * SmolLM2) whether it wants the node's data. Answering that in Python costs about 8% of decode
 * speed; this filter answers it here from a list of tensor names and calls Python only for the
 * tensors on the list, once each has been computed. Built by `python -m fints_edge.llama.native build`;
 * without it the injector answers in Python (same results, slower).
 *
 * No ggml headers: the tensor is opaque, its name comes from ggml_get_name, whose address
 * Python passes in. */
#include <stdbool.h>
#include <string.h>

#define FE_MAX_NAMES 128
#define FE_NAME_LEN 64 /* GGML_MAX_NAME */

typedef bool (*fe_eval_cb)(void *tensor, bool ask, void *user_data);
typedef const char *(*fe_name_fn)(const void *tensor);

typedef struct {
    fe_eval_cb python;  /* called with ask = false for the listed tensors */
    fe_name_fn get_name;
    int n_names;        /* -1: ask Python about every tensor (more names than fit) */
    char names[FE_MAX_NAMES][FE_NAME_LEN];
} fe_filter;

int fe_filter_abi(void) { return 1; }

bool fe_filter_eval(void *tensor, bool ask, void *user_data) {
    fe_filter *f = (fe_filter *)user_data;
    if (!ask || f->n_names < 0) {
        return f->python(tensor, ask, NULL);
    }
    if (f->n_names == 0) {
        return false;
    }
    const char *name = f->get_name(tensor);
    for (int i = 0; i < f->n_names; i++) {
        if (name[0] == f->names[i][0] && strncmp(name, f->names[i], FE_NAME_LEN) == 0) {
            return true;
        }
    }
    return false;
}
