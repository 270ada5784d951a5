// The one table of the page's views: app.js draws a section per row (in this order) and
// index.js derives from it what the first view loads. Adding a view is one module
// (view_<id>.js exporting `render`) and one row here. Imports nothing, so that index.js can
// read it before anything else arrives.
//
// id: section `view-<id>` and module `view_<id>.js`; needs: the analysis the view draws
// (its row says "Not computed" without it); command: how to compute it.

export const VIEWS = [
  {id: 'importance', title: 'Which heads matter?', needs: 'importance',
   help: 'Pruning-based importance: mask gradients and single-head ablation.',
   command: 'vit-analytics importance --checkpoint CKPT --images DIR --logdir LOGDIR --per-image'},
  {id: 'strength', title: 'How strongly do patches attend to their neighbours?', needs: 'strength',
   help: 'Every locality number is drawn against two reference heads: uniform attention (1/T to every token) and self-only attention.',
   command: 'vit-analytics strength --checkpoint CKPT --images DIR --logdir LOGDIR'},
  {id: 'patterns', title: 'What patterns have heads learned?', needs: 'patterns', help: null,
   command: 'vit-analytics patterns --checkpoint CKPT --images DIR --logdir LOGDIR'},
  {id: 'overview', title: 'Image overview', needs: 'importance',
   help: 'Every analysed image: label, prediction, loss and the selected head\'s per-image importance.',
   command: 'vit-analytics importance ... --per-image'},
  {id: 'images', title: 'Attention of one image', needs: 'strength', help: null,
   command: 'vit-analytics strength ... --map-images N'},
  {id: 'training', title: 'Over training', needs: 'steps',
   help: 'Per-head importance, mean distance and entropy against the training step (rows: layers, columns: heads). The selected head is highlighted; the dashed line marks the step shown.',
   command: 'vit-analytics train-demo --log-every K, or training.analyse_step in your loop',
   // A run written once has no steps: the section is left out, not shown empty.
   hideWithout: true},
];

// The first view is drawn alone, before the others' modules arrive.
export const FIRST_VIEW = VIEWS[0];
export const moduleOf = (view) => `view_${view.id}.js`;
// Every module the first view needs (index.js preloads them all at once).
export const FIRST_VIEW_MODULES = ['app.js', 'charts.js', 'data.js', 'dom.js', 'format.js',
                                   'state.js', 'style.js', 'url.js', moduleOf(FIRST_VIEW)];
