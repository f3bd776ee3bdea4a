/*
 * Broken plugins for the loader's refusal tests. Exactly one of these is
 * defined per build (-DVARIANT_...), each producing a .so the gateway must
 * refuse, with a message naming the file and the reason:
 *
 *   VARIANT_BAD_MAJOR     abi_major = KFG_ABI_MAJOR + 1
 *   VARIANT_NEWER_MINOR   abi_minor = KFG_ABI_MINOR + 1 (needs a newer host)
 *   VARIANT_SMALL_STRUCT  struct_size smaller than the ABI 1.0 descriptor
 *   VARIANT_NO_SYMBOL     no kfg_plugin_descriptor symbol at all
 *   VARIANT_UNDEFINED     references a function nobody provides (dlopen fails)
 *   VARIANT_NO_DELIVER    an adapter without a deliver callback
 *
 * VARIANT_NAME sets the descriptor name (defaults to "broken").
 */
#include <kfgate/plugin.h>

#ifndef VARIANT_NAME
#define VARIANT_NAME "broken"
#endif

__attribute__((unused)) static int v_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    (void)ins;
    (void)host;
    (void)ctx;
    return KFG_OK;
}

__attribute__((unused)) static int v_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    (void)ctx;
    (void)m;
    (void)d;
    return KFG_EFAIL;
}

#if defined(VARIANT_NO_SYMBOL)
__attribute__((visibility("default"))) const int kfg_plugin_descriptor_typo = 1;
#else

#if defined(VARIANT_UNDEFINED)
extern int kfg_conformance_no_such_function(void);
static int v_start(void *ctx)
{
    (void)ctx;
    return kfg_conformance_no_such_function();
}
#else
#define v_start NULL
#endif

KFG_PLUGIN_EXPORT = {
#if defined(VARIANT_BAD_MAJOR)
    .abi_major = KFG_ABI_MAJOR + 1, .abi_minor = 0, .struct_size = sizeof(struct kfg_plugin),
#elif defined(VARIANT_NEWER_MINOR)
    .abi_major = KFG_ABI_MAJOR, .abi_minor = KFG_ABI_MINOR + 1,
    .struct_size = sizeof(struct kfg_plugin),
#elif defined(VARIANT_SMALL_STRUCT)
    .abi_major = KFG_ABI_MAJOR, .abi_minor = KFG_ABI_MINOR, .struct_size = 16,
#else
    KFG_PLUGIN_HEADER,
#endif
    .kind = KFG_KIND_ADAPTER,
    .name = VARIANT_NAME,
    .version = "0.0",
    .init = v_init,
    .start = v_start,
#if !defined(VARIANT_NO_DELIVER)
    .deliver = v_deliver,
#endif
};
#endif
